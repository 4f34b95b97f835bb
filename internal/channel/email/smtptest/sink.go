package smtptest

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync"
)

// sink is the Sink-mode server: a minimal hand-written SMTP loop that
// accepts everything and discards it. go-smtp's server reads DATA one byte
// at a time and writes every reply with its own system call, which makes it,
// not the client, the bottleneck of a benchmark; this loop reads lines with
// bufio and, like Postfix's smtp-sink, answers a group of pipelined
// commands in one write.
type sink struct {
	s     *Server
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (k *sink) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		k.s.conns.Add(1)
		k.mu.Lock()
		k.conns[c] = struct{}{}
		k.mu.Unlock()
		k.wg.Go(func() {
			k.conn(c)
			k.mu.Lock()
			delete(k.conns, c)
			k.mu.Unlock()
			c.Close()
		})
	}
}

func (k *sink) close() {
	k.mu.Lock()
	for c := range k.conns {
		c.Close()
	}
	k.mu.Unlock()
	k.wg.Wait()
}

func (k *sink) conn(c net.Conn) {
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 4<<10)
	w.WriteString("220 smtptest sink ESMTP\r\n")
	var id []byte
	for {
		if r.Buffered() == 0 {
			if w.Flush() != nil {
				return
			}
		}
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		var verb [4]byte
		copy(verb[:], bytes.ToUpper(line[:min(4, len(line))]))
		switch string(verb[:]) {
		case "EHLO":
			w.WriteString("250-smtptest\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
		case "HELO":
			w.WriteString("250 smtptest\r\n")
		case "MAIL", "RCPT", "RSET", "NOOP":
			w.WriteString("250 2.0.0 Ok\r\n")
		case "QUIT":
			w.WriteString("221 2.0.0 Bye\r\n")
			w.Flush()
			return
		case "DATA":
			w.WriteString("354 End data with <CR><LF>.<CR><LF>\r\n")
			if w.Flush() != nil || skipData(r) != nil {
				return
			}
			n := k.s.count.Add(1)
			id = strconv.AppendInt(append(id[:0], "250 2.0.0 Ok: queued as S"...), n, 10)
			w.Write(id)
			w.WriteString("\r\n")
		default:
			w.WriteString("500 5.5.2 Unknown command\r\n")
		}
	}
}

// skipData reads message data up to and including the terminating dot.
func skipData(r *bufio.Reader) error {
	atStart := true
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			atStart = false
			continue
		}
		if err != nil {
			return err
		}
		if atStart && len(line) <= 3 && line[0] == '.' && (len(line) == 2 || line[1] == '\r') {
			return nil
		}
		atStart = true
	}
}
