package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// HandlerStat is how long a service's handlers took for one routing key.
type HandlerStat struct {
	Count   float64
	Seconds float64
	// Retried counts deliveries sent to the retry ladder, and
	// OutageRetried those sent there for an outage, counting no attempt.
	Retried, OutageRetried float64
}

// handlerMetric is the eventbus histogram of handler durations, and
// retriedMetric and outageRetriedMetric the counters of deliveries sent
// to the retry ladder.
const (
	handlerMetric       = "ordermesh_eventbus_handle_seconds"
	retriedMetric       = "ordermesh_eventbus_retried_total"
	outageRetriedMetric = "ordermesh_eventbus_outage_retried_total"
)

// HandlerStats scrapes the process's /metrics and returns the handler
// duration totals by routing key.
func (p *Proc) HandlerStats(ctx context.Context) (map[string]HandlerStat, error) {
	if p.AdminAddr == "" {
		return nil, fmt.Errorf("metrics of %s: no admin endpoint", p.Name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.AdminAddr+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", p.Name, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", p.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics of %s: %s", p.Name, resp.Status)
	}
	return parseHandlerStats(resp.Body)
}

// parseHandlerStats reads the _sum and _count samples of handlerMetric
// from a Prometheus text exposition.
func parseHandlerStats(r io.Reader) (map[string]HandlerStat, error) {
	out := map[string]HandlerStat{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var field string
		rest, ok := strings.CutPrefix(line, handlerMetric)
		switch {
		case ok && strings.HasPrefix(rest, "_sum{"):
			field, rest = "sum", rest[len("_sum"):]
		case ok && strings.HasPrefix(rest, "_count{"):
			field, rest = "count", rest[len("_count"):]
		case strings.HasPrefix(line, retriedMetric+"{"):
			field, rest = "retried", line[len(retriedMetric):]
		case strings.HasPrefix(line, outageRetriedMetric+"{"):
			field, rest = "outage", line[len(outageRetriedMetric):]
		default:
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		key := labelValue(labels[1:], "routing_key")
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", line, err)
		}
		s := out[key]
		switch field {
		case "sum":
			s.Seconds = v
		case "count":
			s.Count = v
		case "outage":
			s.OutageRetried = v
		default:
			s.Retried = v
		}
		out[key] = s
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return out, nil
}

// labelValue returns the value of label name in `a="x",b="y"`.
func labelValue(labels, name string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && k == name {
			if s, err := strconv.Unquote(v); err == nil {
				return s
			}
		}
	}
	return ""
}

// diffStats returns after − before per key.
func diffStats(before, after map[string]HandlerStat) map[string]HandlerStat {
	out := map[string]HandlerStat{}
	for k, a := range after {
		b := before[k]
		d := HandlerStat{Count: a.Count - b.Count, Seconds: a.Seconds - b.Seconds, Retried: a.Retried - b.Retried, OutageRetried: a.OutageRetried - b.OutageRetried}
		if d.Count > 0 {
			out[k] = d
		}
	}
	return out
}
