// go-echo: raw echo, one goroutine per connection, the way Go servers are
// written: a blocking Read into the goroutine's own buffer, and a Write of
// what was read.
//
// What makes it the fast version:
//   - one 16 KiB buffer per connection, allocated once: nothing is
//     allocated per message, so the garbage collector has nothing to do
//     while messages flow.  16 KiB holds the largest burst bench/run sends
//     (16 pipelined 64-byte messages, or one 4 KiB message) in one read;
//     a bigger buffer would only cost memory per connection.
//   - no bufio: a raw echo has nothing to gather, and Write of the bytes
//     just read is one write(2).
//   - io.Copy(c, c) is not used: on Linux it splices through a pipe that a
//     connection holds while it waits, two more fds each, which 10,000
//     idle connections cannot afford under a 20,000-fd limit.
//
// The Go runtime sets TCP_NODELAY, and its netpoller tries each read
// before it waits: a Read that finds nothing costs a read(2) that returns
// EAGAIN, so Go makes about two reads per message where the C servers make
// one.  bench/run runs it with GOMAXPROCS=1 (the fair match for the
// one-thread servers) and with the default (one P per core).
package main

import (
	"fmt"
	"net"
	"os"
)

func serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 16384)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-echo PORT")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-echo:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", l.Addr()) // bench/run waits for this line
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		go serve(c)
	}
}
