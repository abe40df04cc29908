package smtpsink

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"time"
)

// Message is one message the sink received.
type Message struct {
	// From is the envelope sender (MAIL FROM).
	From string
	// To are the envelope recipients (RCPT TO).
	To []string
	// Header is the message's header; Subject and MessageID repeat two of
	// its fields, decoded.
	Header mail.Header
	// Subject is the Subject header with RFC 2047 encoded words decoded.
	Subject string
	// MessageID is the Message-ID header as sent, angle brackets included.
	MessageID string
	// Text and HTML are the decoded text/plain and text/html bodies: the
	// message's own body, or the first part of each type found in its
	// (possibly nested) multipart body. Empty when there is none.
	Text string
	HTML string
	// ParseError says why the message could not be fully parsed; the sink
	// accepts such a message anyway and keeps it in Raw.
	ParseError string
	// Raw is the message exactly as received.
	Raw []byte
	// Received is when the sink received the message.
	Received time.Time
	// TLS reports whether the message came over an encrypted connection
	// (STARTTLS or TLS from the start).
	TLS bool
	// User is the user name the client authenticated as (SMTP AUTH), or
	// empty if it did not.
	User string
	// HELO is the name the client gave in its EHLO (or HELO) command.
	HELO string
}

// HasRecipient reports whether addr (compared without case) is one of the
// message's envelope recipients.
func (m Message) HasRecipient(addr string) bool {
	for _, to := range m.To {
		if strings.EqualFold(to, addr) {
			return true
		}
	}
	return false
}

func (m Message) clone() Message {
	c := m
	c.To = append([]string(nil), m.To...)
	c.Raw = append([]byte(nil), m.Raw...)
	if m.Header != nil {
		c.Header = make(mail.Header, len(m.Header))
		for k, v := range m.Header {
			c.Header[k] = append([]string(nil), v...)
		}
	}
	return c
}

// parse reads raw's header and bodies. It never fails: problems are noted
// in ParseError.
func parse(raw []byte) Message {
	m := Message{Raw: raw}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		m.ParseError = fmt.Sprintf("read message: %v", err)
		return m
	}
	m.Header = msg.Header
	m.MessageID = msg.Header.Get("Message-Id")
	dec := new(mime.WordDecoder)
	if m.Subject, err = dec.DecodeHeader(msg.Header.Get("Subject")); err != nil {
		m.Subject = msg.Header.Get("Subject")
	}
	if err := m.readBody(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), msg.Body, 0); err != nil {
		m.ParseError = err.Error()
	}
	return m
}

// maxDepth bounds the nesting of multipart bodies the sink looks into.
const maxDepth = 5

// readBody stores the body of one entity with the given content type and
// transfer encoding, descending into multipart bodies.
func (m *Message) readBody(contentType, encoding string, body io.Reader, depth int) error {
	mediaType, params, err := mime.ParseMediaType(contentType)
	if contentType == "" {
		mediaType, err = "text/plain", nil
	}
	if err != nil {
		return fmt.Errorf("parse content type %q: %w", contentType, err)
	}
	if strings.HasPrefix(mediaType, "multipart/") {
		if depth >= maxDepth {
			return fmt.Errorf("multipart nested deeper than %d", maxDepth)
		}
		// multipart.Reader decodes quoted-printable parts itself (and drops
		// their Content-Transfer-Encoding header); base64 is left to us.
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s part: %w", mediaType, err)
			}
			if err := m.readBody(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p, depth+1); err != nil {
				return err
			}
		}
	}
	var target *string
	switch mediaType {
	case "text/plain":
		target = &m.Text
	case "text/html":
		target = &m.HTML
	default:
		return nil
	}
	if *target != "" {
		return nil
	}
	decoded, err := io.ReadAll(decoder(encoding, body))
	if err != nil {
		return fmt.Errorf("decode %s body: %w", mediaType, err)
	}
	*target = string(decoded)
	return nil
}

// decoder undoes a Content-Transfer-Encoding on a top-level body or a part
// that multipart.Reader did not already decode.
func decoder(encoding string, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, newlineStripper{r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	default:
		return r
	}
}

// newlineStripper drops CR and LF, which base64 bodies are wrapped with.
type newlineStripper struct{ r io.Reader }

func (n newlineStripper) Read(p []byte) (int, error) {
	for {
		k, err := n.r.Read(p)
		j := 0
		for _, b := range p[:k] {
			if b != '\r' && b != '\n' {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}
