#include "crest_test.h"
int main(void){return 77;}
