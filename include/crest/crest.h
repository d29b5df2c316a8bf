/* crest: an edge-triggered epoll reactor for Linux.  The umbrella header. */
#ifndef CREST_CREST_H
#define CREST_CREST_H

#include "error.h"
#include "log.h"
#include "fdreg.h"
#include "loop.h"
#include "io.h"
#include "timer.h"
#include "signal.h"
#include "addr.h"
#include "sockopt.h"
#include "codec.h"
#include "conn.h"
#include "proxy.h"
#include "listener.h"
#include "group.h"
#include "activation.h"
#include "hist.h"
#include "insight.h"
#include "doctor.h"
#include "http.h"
#include "admin.h"
#include "resolve.h"
#include "pool.h"

#endif
