# crest_warnings.m4 - compiler warning flags for crest
#
# SYNOPSIS
#
#   CREST_WARNINGS
#
# DESCRIPTION
#
#   Tests each flag of crest's warning set against the C compiler and puts
#   the ones it accepts into WARN_CFLAGS (AC_SUBST).  A flag is kept only if
#   a trivial program still compiles with it under -Werror, so an unknown
#   flag never reaches the build.
#
#   Adds --enable-werror: when given, -Werror is appended to WARN_CFLAGS.
#   -Werror is never put into CFLAGS, so configure's own tests are not
#   affected by it.
#
#   Deliberately absent: -Wdeclaration-after-statement (C99 style is used)
#   and -Wno-unused-parameter (unused parameters are marked with (void)x).
#
#   WARN_CFLAGS is not added to any target by this macro: each Makefile.am
#   target must use it (crest puts it in AM_CFLAGS and the per-target
#   CFLAGS).

#serial 1

AC_DEFUN([CREST_WARNINGS], [
  AC_REQUIRE([AC_PROG_CC])

  AC_ARG_ENABLE([werror],
    [AS_HELP_STRING([--enable-werror],
                    [treat compiler warnings as errors (adds -Werror)])],
    [crest_werror=$enableval], [crest_werror=no])

  AC_LANG_PUSH([C])
  crest_warn_cflags=
  for crest_flag in \
      -Wall \
      -Wextra \
      -Wshadow \
      -Wpointer-arith \
      -Wcast-align \
      -Wwrite-strings \
      -Wstrict-prototypes \
      -Wmissing-prototypes \
      -Wmissing-declarations \
      -Wredundant-decls \
      -Wnested-externs \
      -Wformat=2 \
      -Wundef \
      -Wvla \
      -Wnull-dereference \
      -Wdouble-promotion \
      -Wimplicit-fallthrough
  do
    AS_VAR_PUSHDEF([crest_cache], [crest_cv_cflag_$crest_flag])
    AC_CACHE_CHECK([whether $CC accepts $crest_flag], [crest_cache], [
      crest_save_CFLAGS=$CFLAGS
      CFLAGS="$CFLAGS -Werror $crest_flag"
      AC_COMPILE_IFELSE([AC_LANG_PROGRAM([], [])],
                        [AS_VAR_SET([crest_cache], [yes])],
                        [AS_VAR_SET([crest_cache], [no])])
      CFLAGS=$crest_save_CFLAGS
    ])
    AS_VAR_IF([crest_cache], [yes],
              [crest_warn_cflags="$crest_warn_cflags $crest_flag"])
    AS_VAR_POPDEF([crest_cache])
  done
  AC_LANG_POP([C])

  AS_IF([test "x$crest_werror" = "xyes"],
        [crest_warn_cflags="$crest_warn_cflags -Werror"])

  dnl Strip the leading blank.
  WARN_CFLAGS=`echo $crest_warn_cflags`
  AC_SUBST([WARN_CFLAGS])
])
