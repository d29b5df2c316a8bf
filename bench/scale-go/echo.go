// scale-go echo: the comparison server for bench/scale.  Raw echo with
// one goroutine per connection, written the way Go servers usually are: a
// blocking Read into the goroutine's own buffer, then a Write of what came
// (io.Copy(c, c) would splice through a pipe, two more fds per
// connection).  The buffer is 4 KiB by default, bufio's default size
// (-buf to change it).  Go 1.19+ raises the soft fd limit to the hard one
// by itself, and sets TCP_NODELAY on every connection.
//
//	go build -o scale-go-echo bench/scale-go/echo.go
//	./scale-go-echo -port 0        # prints "listening on 127.0.0.1:PORT"
//
// SIGTERM or SIGINT: close the listener and every connection, print how
// many were served, exit 0.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 7000, "TCP port (0: the kernel picks)")
	bufSize := flag.Int("buf", 4096, "read buffer per connection, bytes")
	flag.Parse()

	l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *host, *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale-go-echo:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", l.Addr())

	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	served := 0
	stopping := false

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		mu.Lock()
		stopping = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		l.Close()
	}()

	var wg sync.WaitGroup
	for {
		c, err := l.Accept()
		if err != nil {
			mu.Lock()
			done := stopping
			mu.Unlock()
			if done {
				break
			}
			continue // EMFILE and the like: keep serving the others
		}
		mu.Lock()
		if stopping {
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = struct{}{}
		served++
		mu.Unlock()
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			buf := make([]byte, *bufSize)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			c.Close()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	fmt.Printf("scale-go-echo: served %d connections\n", served)
}
