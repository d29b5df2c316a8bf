/* The doctor (doctor.h).  (Skeleton: the rules come with their own change.) */
#include "internal.h"
