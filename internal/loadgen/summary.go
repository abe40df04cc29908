package loadgen

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Summary is the result of a run. Rates are per second, latencies in
// milliseconds; its JSON form is what `loadgen --json` prints.
type Summary struct {
	Protocol    string  `json:"protocol"`
	TargetRate  float64 `json:"target_rate,omitempty"`
	Concurrency int     `json:"concurrency,omitempty"`
	// LoadSeconds is how long orders were being sent.
	LoadSeconds float64 `json:"load_seconds"`

	Sent    int `json:"sent"`
	Created int `json:"created"`
	Failed  int `json:"failed"`
	// Errors counts the failed CreateOrders by gRPC code.
	Errors map[string]int `json:"errors"`
	// Interrupted is set when the run was stopped early (Ctrl-C): the
	// requests sent by then finished and count, no more were sent.
	Interrupted bool `json:"interrupted,omitempty"`
	// CreatedPerSec is created orders over the time from the start to the
	// last successful CreateOrder.
	CreatedPerSec float64 `json:"created_per_s"`
	// CreateLatency is the time from when each CreateOrder was due to its
	// answer, over those that succeeded or timed out (a timeout is a
	// latency too, the largest).
	CreateLatency Latency `json:"create_latency"`

	// Tracking says how terminal states were observed; empty when they
	// were not.
	Tracking string `json:"tracking,omitempty"`
	// Final counts the created orders by final status; PENDING ones did
	// not finish within the drain timeout.
	Final map[string]int `json:"final,omitempty"`
	// Missing counts created orders that ListOrders did not return.
	Missing int `json:"missing,omitempty"`
	// ConfirmedPerSec is confirmed orders over the time from the start to
	// the last terminal update.
	ConfirmedPerSec float64 `json:"confirmed_per_s"`
	// DrainConfirmedPerSec is the orders confirmed after the load ended
	// over the time from then to the last terminal update: the rate at
	// which the platform works off a backlog without new orders competing.
	// 0 when there was no backlog to speak of (fewer than 50 orders).
	DrainConfirmedPerSec float64 `json:"drain_confirmed_per_s,omitempty"`
	// TerminalSeconds is the time from the start to the last terminal
	// update.
	TerminalSeconds float64 `json:"terminal_seconds,omitempty"`
	TerminalLatency Latency `json:"terminal_latency"`
	// PollErrors counts the tracking polls that failed, LastPollError says
	// why the last did. They only delayed seeing orders end: the final
	// pass read every order's state.
	PollErrors    int    `json:"poll_errors,omitempty"`
	LastPollError string `json:"last_poll_error,omitempty"`
}

func (s *Summary) addOutcome(o Outcome, start, loadEnd time.Time) {
	s.Final = o.Statuses
	drained := 0
	for _, t := range o.ConfirmedAt {
		if t.After(loadEnd) {
			drained++
		}
	}
	if drained >= 50 && o.LastTerminal.After(loadEnd) {
		s.DrainConfirmedPerSec = float64(drained) / o.LastTerminal.Sub(loadEnd).Seconds()
	}
	s.Missing = o.Missing
	s.TerminalLatency = Summarize(o.Latencies)
	if !o.LastTerminal.IsZero() {
		s.TerminalSeconds = o.LastTerminal.Sub(start).Seconds()
		if s.TerminalSeconds > 0 {
			s.ConfirmedPerSec = float64(o.Statuses["CONFIRMED"]) / s.TerminalSeconds
		}
	}
}

// Mode describes the load shape: "open loop at 500/s" or "closed loop,
// 50 clients".
func (s Summary) Mode() string {
	if s.TargetRate > 0 {
		return fmt.Sprintf("open loop at %s/s", trimFloat(s.TargetRate))
	}
	return fmt.Sprintf("closed loop, %d clients", s.Concurrency)
}

// WriteTable writes s as a human-readable table.
func (s Summary) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	interrupted := ""
	if s.Interrupted {
		interrupted = " (interrupted)"
	}
	p("protocol\t%s, %s, %.1f s%s", s.Protocol, s.Mode(), s.LoadSeconds, interrupted)
	p("orders\tsent %d, created %d, failed %d", s.Sent, s.Created, s.Failed)
	p("created/s\t%.1f", s.CreatedPerSec)
	if s.Tracking != "" {
		p("confirmed/s\t%.1f (last terminal at %.1f s)", s.ConfirmedPerSec, s.TerminalSeconds)
		if s.DrainConfirmedPerSec > 0 {
			p("drain\t%.1f confirmed/s after the load ended", s.DrainConfirmedPerSec)
		}
		p("final\t%s", formatCounts(s.Final, s.Missing))
		if s.PollErrors > 0 {
			p("polls failed\t%d (last: %s); the final states were read afterwards", s.PollErrors, s.LastPollError)
		}
	}
	p("errors\t%s", formatCounts(s.Errors, 0))
	p("")
	p("latency (ms)\tn\tp50\tp95\tp99\tmax")
	row := func(name string, l Latency) {
		p("%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f", name, l.Count, l.P50, l.P95, l.P99, l.Max)
	}
	row("CreateOrder", s.CreateLatency)
	if s.Tracking != "" {
		row("create→terminal", s.TerminalLatency)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	if s.Tracking != "" {
		if _, err := fmt.Fprintf(w, "\nterminal tracking: %s.\n", s.Tracking); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
	}
	return nil
}

// formatCounts writes counts as "A 3, B 1" by descending count, then name;
// "none" when empty.
func formatCounts(counts map[string]int, missing int) string {
	keys := slices.Collect(maps.Keys(counts))
	slices.SortFunc(keys, func(a, b string) int {
		if counts[a] != counts[b] {
			return counts[b] - counts[a]
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
		}
	}
	if missing > 0 {
		parts = append(parts, fmt.Sprintf("not found %d", missing))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func trimFloat(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f), "0"), ".")
}

// ProgressLine formats one progress update: elapsed time, orders sent,
// created (with the rate over the last interval), failed, in flight and,
// when tracking, terminal and pending.
func ProgressLine(elapsed time.Duration, sent, created, failed, inFlight int64, rate float64, tracking bool, terminal, pending int) string {
	line := fmt.Sprintf("%6.1fs  sent %d  created %d (%.0f/s)  failed %d  in flight %d",
		elapsed.Seconds(), sent, created, rate, failed, inFlight)
	if tracking {
		line += fmt.Sprintf("  terminal %d  pending %d", terminal, pending)
	}
	return line
}

// showProgress prints progress lines until ctx ends, the final one after
// the load ended.
func showProgress(ctx context.Context, cfg Config, start time.Time, c *counters, tracker *Tracker, loadDone <-chan struct{}) {
	if cfg.Progress == nil {
		return
	}
	t := time.NewTicker(cfg.ProgressInterval)
	defer t.Stop()
	var lastCreated int64
	last := start
	width := 0
	print := func(final bool) {
		now := time.Now()
		created := c.created.Load()
		rate := float64(created-lastCreated) / now.Sub(last).Seconds()
		lastCreated, last = created, now
		terminal, pending := 0, 0
		if tracker != nil {
			terminal, pending = tracker.Counts()
		}
		line := ProgressLine(now.Sub(start), c.sent.Load(), created, c.failed.Load(), c.inFlight.Load(), rate, tracker != nil, terminal, pending)
		if cfg.ProgressTTY {
			pad := max(width-len(line), 0)
			width = len(line)
			end := ""
			if final {
				end = "\n"
			}
			fmt.Fprintf(cfg.Progress, "\r%s%s%s", line, strings.Repeat(" ", pad), end)
			return
		}
		fmt.Fprintln(cfg.Progress, line)
	}
	for {
		select {
		case <-ctx.Done():
			print(true)
			return
		case <-loadDone:
			// Keep reporting while the drain runs; the caller's errgroup
			// context ends when Run returns.
			loadDone = nil
		case <-t.C:
			print(false)
		}
	}
}
