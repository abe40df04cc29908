package mailer

import (
	"bytes"
	"crypto/rand"
	"mime"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/ordermesh/ordermesh/services/notification/internal/app"
)

// Limits of the message format.
const (
	// maxLine is the longest line, CRLF excluded, a body may have sent as
	// it is, 7bit or 8bit (RFC 5322 2.1.1, RFC 2045 2.7 and 2.8).
	maxLine = 998
	// foldAt is the length past which header lines are folded where the
	// value has a space (RFC 5322 2.1.1 recommends 78 at most).
	foldAt = 76
	// userAgent names the sending software in User-Agent and X-Mailer.
	userAgent = "ordermesh notification"
)

// transferEncoding is a body's Content-Transfer-Encoding.
type transferEncoding string

// The transfer encodings a body is sent with.
const (
	encoding7bit            transferEncoding = "7bit"
	encoding8bit            transferEncoding = "8bit"
	encodingQuotedPrintable transferEncoding = "quoted-printable"
)

// bodyEncoding returns how body is sent: as it is when it can be (7bit
// when it is ASCII, 8bit when it is not and the server takes 8-bit data,
// eightBit), quoted-printable otherwise, and for a body with a line longer
// than maxLine, a CR or a NUL, which neither plain form may carry.
func bodyEncoding(body string, eightBit bool) transferEncoding {
	ascii, line := true, 0
	for i := 0; i < len(body); i++ {
		switch c := body[i]; {
		case c == '\n':
			line = 0
			continue
		case c == '\r' || c == 0:
			return encodingQuotedPrintable
		case c >= 0x80:
			ascii = false
		}
		if line++; line > maxLine {
			return encodingQuotedPrintable
		}
	}
	switch {
	case ascii:
		return encoding7bit
	case eightBit:
		return encoding8bit
	default:
		return encodingQuotedPrintable
	}
}

// envelope is what one email's message is made of besides the email
// itself.
type envelope struct {
	// from and to are the From and To header values.
	from, to string
	// messageID is the Message-ID without angle brackets.
	messageID string
	date      time.Time
	// boundary separates the text and HTML parts.
	boundary string
	// eightBit says the server takes 8-bit data (8BITMIME).
	eightBit bool
}

// newBoundary returns a multipart boundary: random, so that no body
// contains it.
func newBoundary() string {
	return rand.Text()
}

// appendMessage appends e's message to dst in the form it takes on the
// wire after DATA: the header, then the text body with the HTML body as
// its alternative (the text alone when there is no HTML), every line
// ended by CRLF and a line starting with a dot given another (RFC 5321
// 4.5.2), and the "." line that ends the data. Each body goes as it is
// when it can, quoted-printable otherwise (see bodyEncoding), with
// charset UTF-8; the subject is an RFC 2047 encoded word when it is not
// plain ASCII.
func appendMessage(dst []byte, env envelope, e app.Email) []byte {
	dst = append(dst, "Date: "...)
	dst = env.date.AppendFormat(dst, time.RFC1123Z)
	dst = append(dst, "\r\nMIME-Version: 1.0\r\nMessage-ID: <"...)
	dst = append(dst, env.messageID...)
	dst = append(dst, ">\r\n"...)
	dst = appendHeader(dst, "Subject", mime.QEncoding.Encode("UTF-8", e.Subject))
	dst = append(dst, "User-Agent: "+userAgent+"\r\nX-Mailer: "+userAgent+"\r\n"...)
	dst = appendHeader(dst, "From", env.from)
	dst = appendHeader(dst, "To", env.to)
	if e.HTML == "" {
		dst = appendPart(dst, "text/plain", e.Text, env.eightBit)
		if !bytes.HasSuffix(dst, []byte("\r\n")) {
			dst = append(dst, "\r\n"...)
		}
		return append(dst, ".\r\n"...)
	}
	if bodyEncoding(e.Text, env.eightBit) == encoding8bit || bodyEncoding(e.HTML, env.eightBit) == encoding8bit {
		// A multipart entity is 7bit unless it says otherwise, and must
		// say so when a part is 8bit (RFC 2045 6.4).
		dst = append(dst, "Content-Transfer-Encoding: 8bit\r\n"...)
	}
	dst = append(dst, "Content-Type: multipart/alternative;\r\n boundary="...)
	dst = append(dst, env.boundary...)
	dst = append(dst, "\r\n\r\n--"...)
	dst = append(dst, env.boundary...)
	dst = append(dst, "\r\n"...)
	dst = appendPart(dst, "text/plain", e.Text, env.eightBit)
	dst = append(dst, "\r\n--"...)
	dst = append(dst, env.boundary...)
	dst = append(dst, "\r\n"...)
	dst = appendPart(dst, "text/html", e.HTML, env.eightBit)
	dst = append(dst, "\r\n--"...)
	dst = append(dst, env.boundary...)
	return append(dst, "--\r\n.\r\n"...)
}

// appendHeader appends the header field name with value, folded before
// a word that would take the line past foldAt, the first word too: an
// encoded word may be 75 characters long (RFC 2047 2), and the line it
// is on at most 76. The value must hold no line break: the callers pass
// encoded words and formatted addresses.
func appendHeader(dst []byte, name, value string) []byte {
	dst = append(dst, name...)
	dst = append(dst, ':')
	n := len(name) + 1
	for word := range strings.SplitSeq(value, " ") {
		if n+1+len(word) > foldAt {
			dst = append(dst, "\r\n"...)
			n = 0
		}
		dst = append(dst, ' ')
		dst = append(dst, word...)
		n += 1 + len(word)
	}
	return append(dst, "\r\n"...)
}

// appendPart appends the header and the body of a text part of type
// mediaType. Its last line has no line break of its own: what follows
// the part starts with one.
func appendPart(dst []byte, mediaType, body string, eightBit bool) []byte {
	enc := bodyEncoding(body, eightBit)
	dst = append(dst, "Content-Transfer-Encoding: "...)
	dst = append(dst, enc...)
	dst = append(dst, "\r\nContent-Type: "...)
	dst = append(dst, mediaType...)
	dst = append(dst, "; charset=UTF-8\r\n\r\n"...)
	if enc == encodingQuotedPrintable {
		var b bytes.Buffer
		w := quotedprintable.NewWriter(&b)
		// Writes to a bytes.Buffer do not fail.
		_, _ = w.Write([]byte(body))
		_ = w.Close()
		body = b.String()
	}
	return appendLines(dst, body)
}

// appendLines appends text with every line ended by CRLF, whether it
// ended by LF (the bodies as rendered) or CRLF (quoted-printable), and a
// line starting with a dot given another. The last line, after the last
// line break, is appended without one.
func appendLines(dst []byte, text string) []byte {
	for {
		i := strings.IndexByte(text, '\n')
		line := text
		if i >= 0 {
			line = strings.TrimSuffix(text[:i], "\r")
		}
		if strings.HasPrefix(line, ".") {
			dst = append(dst, '.')
		}
		dst = append(dst, line...)
		if i < 0 {
			return dst
		}
		dst = append(dst, "\r\n"...)
		text = text[i+1:]
	}
}
