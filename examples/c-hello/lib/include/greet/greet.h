#pragma once
const char *greeting(void);
const char *greet_version(void);
int add(int a, int b);
