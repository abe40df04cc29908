package config

import (
	"errors"
	"log/slog"
	"net/url"
	"reflect"
	"strings"
	"time"
)

// Mask replaces a secret in logged configuration.
const Mask = "xxxxx"

// LogValue renders a config struct (or a pointer to one) for logging as a
// group with one attribute per exported field, named after the field,
// nested structs as nested groups. Secrets are masked:
//
//   - a field tagged `secret:"true"` shows Mask when set and "" when empty;
//   - a string, url.URL or *url.URL that is a URL with a password shows the
//     password as Mask, as do query parameters whose name contains
//     "password" (see RedactURL).
//
// time.Duration fields render as "1.5s", Bytes as "64MiB". Anything that is not a struct is
// returned as slog.AnyValue, with strings passed through RedactURL.
func LogValue(cfg any) slog.Value {
	return logValue(reflect.ValueOf(cfg))
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	bytesType    = reflect.TypeFor[Bytes]()
	urlType      = reflect.TypeFor[url.URL]()
	timeType     = reflect.TypeFor[time.Time]()
)

func logValue(v reflect.Value) slog.Value {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return slog.AnyValue(nil)
		}
		if v.Type() == reflect.PointerTo(urlType) {
			return slog.StringValue(v.Interface().(*url.URL).Redacted())
		}
		v = v.Elem()
	}
	switch {
	case !v.IsValid():
		return slog.AnyValue(nil)
	case v.Type() == durationType:
		return slog.StringValue(time.Duration(v.Int()).String())
	case v.Type() == bytesType:
		return slog.StringValue(Bytes(v.Int()).String())
	case v.Type() == urlType:
		u := v.Interface().(url.URL)
		return slog.StringValue(RedactURL(u.String()))
	case v.Type() == timeType:
		return slog.TimeValue(v.Interface().(time.Time))
	case v.Kind() == reflect.String:
		return slog.StringValue(RedactURL(v.String()))
	case v.Kind() == reflect.Slice && v.Type().Elem() == durationType:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = time.Duration(v.Index(i).Int()).String()
		}
		return slog.StringValue(strings.Join(parts, ","))
	case v.Kind() == reflect.Struct:
		var attrs []slog.Attr
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			fv := v.Field(i)
			if f.Tag.Get("secret") == "true" {
				masked := ""
				if !fv.IsZero() {
					masked = Mask
				}
				attrs = append(attrs, slog.String(f.Name, masked))
				continue
			}
			attrs = append(attrs, slog.Attr{Key: f.Name, Value: logValue(fv)})
		}
		return slog.GroupValue(attrs...)
	default:
		return slog.AnyValue(v.Interface())
	}
}

// RedactURL returns raw with the password of its user info and the values
// of query parameters whose name contains "password" (as in PostgreSQL's
// sslpassword) replaced by Mask. A string that seems to carry a password
// but does not parse, or parses without user info (an unencoded "/", "?"
// or "#" cut it short), is replaced whole; anything else that does not
// parse as a URL with a scheme is returned unchanged.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if (err != nil || u.User == nil) && looksLikePassword(raw) != "" {
		return "(a URL that does not parse as it seems meant to, not shown: it may hold a password)"
	}
	if err != nil || u.Scheme == "" {
		return raw
	}
	changed := false
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Mask)
		changed = true
	}
	if u.RawQuery != "" {
		q := u.Query()
		masked := false
		for k := range q {
			if strings.Contains(strings.ToLower(k), "password") {
				for i := range q[k] {
					q[k][i] = Mask
				}
				masked = true
			}
		}
		if masked {
			u.RawQuery = q.Encode()
			changed = true
		}
	}
	if !changed {
		return raw
	}
	return u.String()
}

// ParseURL parses raw as url.Parse does, with errors that never hold
// raw's password: url.Parse's own error quotes raw whole, so it is given
// without raw, and not at all when raw may carry a password (a password
// with an unencoded "#", "/" or "?" cuts the URL short and lands in the
// error as a port or an escape); and a raw that parses but whose user
// info such a character cut short ("postgres://u:12/x@host/db" parses as
// host "u:12", the rest of the password in the path) is refused.
func ParseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil && looksLikePassword(raw) != "":
		return nil, errors.New("it does not parse (not shown: it may hold a password; percent-encode any of @ : / ? # % in the user name and password)")
	case err != nil:
		if urlErr, ok := errors.AsType[*url.Error](err); ok {
			err = urlErr.Err
		}
		return nil, err
	case u.User == nil && looksLikePassword(raw) != "":
		return nil, errors.New("its user name and password seem cut short (not shown: percent-encode any of @ : / ? # % in them)")
	}
	return u, nil
}

// looksLikePassword returns what raw would carry as a password if it were
// a URL with user info: the text after the first ":" of the part between
// "://" and the last "@". It is empty when raw has no such part.
func looksLikePassword(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return ""
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	return pw
}
