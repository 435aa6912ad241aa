#include "greet/greet.h"
int main(void) { return add(2, 2) == 4 ? 0 : 1; }
