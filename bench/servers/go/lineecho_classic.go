// go-line-classic: the classic Go line echo server, one goroutine per
// connection, as tutorials write it:
//
//	scanner := bufio.NewScanner(conn)
//	for scanner.Scan() {
//		fmt.Fprintf(conn, "echo: %s\n", scanner.Text())
//	}
//
// crest-echo --line answers byte for byte the same (bench/run checks it).
// One write(2) per line, and a string and a formatted copy per line: the
// common way.  lineecho.go is the same server written for speed.
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
		fmt.Fprintln(os.Stderr, "usage: go-line-classic PORT")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-line-classic:", err)
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
