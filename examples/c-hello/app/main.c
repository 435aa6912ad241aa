#include <stdio.h>
#include "greet/greet.h"
int main(void) { printf("%s %d (%s)\n", greeting(), add(2, 3), greet_version()); return 0; }
