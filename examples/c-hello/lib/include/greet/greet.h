#pragma once
const char *greeting(void);
int add(int a, int b);
