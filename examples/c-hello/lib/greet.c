#include "greet/greet.h"
const char *greeting(void) { return GREETING; }
int add(int a, int b) { return a + b; }
