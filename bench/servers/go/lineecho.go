// go-line: the line echo server written the way a Go programmer who cares
// about speed writes it, one goroutine per connection.
//
// It keeps the classic server's bufio.Scanner (lineecho_classic.go), so
// every edge case (CR before the newline dropped, the last line without a
// newline answered at EOF, a line over 64 KiB ending the connection) is
// the classic's, byte for byte; bench/run checks crest-echo --line against
// both.  What changes is the writing:
//
//   - replies are gathered in a bufio.Writer, flushed when the scanner has
//     no complete line left and is about to read from the connection: a
//     lone line is answered at once, and the lines that came in one read
//     share one write(2), the usual way for a server that accepts
//     pipelined requests;
//   - scanner.Bytes() and the writer's WriteString/Write/WriteByte, not
//     scanner.Text() and fmt.Fprintf: nothing is allocated per line.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
)

// flushReader flushes the replies written so far before each read from
// the connection, that is, whenever the scanner has run out of lines.
type flushReader struct {
	conn net.Conn
	w    *bufio.Writer
}

func (r *flushReader) Read(p []byte) (int, error) {
	if r.w.Buffered() > 0 {
		if err := r.w.Flush(); err != nil {
			return 0, err
		}
	}
	return r.conn.Read(p)
}

func serve(conn net.Conn) {
	defer conn.Close()
	w := bufio.NewWriter(conn)
	scanner := bufio.NewScanner(&flushReader{conn, w})
	for scanner.Scan() {
		w.WriteString("echo: ")
		w.Write(scanner.Bytes())
		w.WriteByte('\n')
	}
	w.Flush() // the replies to the last lines, before the close
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
