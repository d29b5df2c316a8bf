// go-echo: raw echo, one goroutine per connection, the way Go servers are
// written: a blocking Read into the goroutine's own buffer, and a Write of
// what was read.  (io.Copy(c, c) would splice through a pipe per
// connection: two more fds each, which 10,000 idle connections cannot
// afford under a 20,000-fd limit.)  The runtime sets TCP_NODELAY.
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
