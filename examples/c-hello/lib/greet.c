#include "greet/greet.h"
#include "greet/version.h"
const char *greeting(void) { return GREETING; }
const char *greet_version(void) { return GREET_NAME " " GREET_VERSION; }
int add(int a, int b) { return a + b; }
