// go-line: the classic Go line echo server, one goroutine per connection:
//
//	scanner := bufio.NewScanner(conn)
//	for scanner.Scan() {
//		fmt.Fprintf(conn, "echo: %s\n", scanner.Text())
//	}
//
// crest-echo --line answers byte for byte the same (bench/run checks it).
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
)

func serve(conn net.Conn) {
	defer conn.Close()
	scanner := bufio.NewScanner(conn)
	for scanner.Scan() {
		fmt.Fprintf(conn, "echo: %s\n", scanner.Text())
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-line PORT")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-line:", err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", l.Addr()) // bench/run waits for this line
	for {
		conn, err := l.Accept()
		if err != nil {
			continue
		}
		go serve(conn)
	}
}
