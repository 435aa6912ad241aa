#include <stdio.h>
#include "greet/greet.h"
int main(void) { printf("%s %d\n", greeting(), add(2, 3)); return 0; }
