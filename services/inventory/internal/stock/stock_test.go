package stock

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMerge(t *testing.T) {
	tests := []struct {
		name    string
		lines   []Line
		want    []Line
		wantErr error
	}{
		{
			name:  "sums lines of one product and sorts by product",
			lines: []Line{{"b", 1}, {"A", 2}, {"b", 3}, {"a", 1}},
			want:  []Line{{"A", 2}, {"a", 1}, {"b", 4}},
		},
		{name: "single line", lines: []Line{{"SKU-1", 7}}, want: []Line{{"SKU-1", 7}}},
		{name: "no lines", lines: nil, wantErr: ErrInvalid},
		{name: "zero quantity", lines: []Line{{"SKU-1", 0}}, wantErr: ErrInvalid},
		{name: "negative quantity", lines: []Line{{"SKU-1", -1}}, wantErr: ErrInvalid},
		{name: "empty product", lines: []Line{{"", 1}}, wantErr: ErrInvalid},
		{name: "bad product", lines: []Line{{"SKU 1", 1}}, wantErr: ErrInvalid},
		{name: "total at the limit", lines: []Line{{"a", MaxQuantity - 1}, {"a", 1}}, want: []Line{{"a", MaxQuantity}}},
		{name: "total over the limit", lines: []Line{{"a", MaxQuantity}, {"a", 1}}, wantErr: ErrInvalid},
		{name: "huge quantity", lines: []Line{{"a", 1 << 62}}, wantErr: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Merge(tt.lines)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Merge error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Merge (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, id := range []string{"a", "SKU-1", "x.y_z", strings.Repeat("a", MaxProductIDLen)} {
		if err := ValidateProductID(id); err != nil {
			t.Errorf("ValidateProductID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", "a b", "é", "a/b", strings.Repeat("a", MaxProductIDLen+1)} {
		if err := ValidateProductID(id); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateProductID(%q) = %v, want ErrInvalid", id, err)
		}
	}
	for _, n := range []int64{0, 1, MaxAvailable} {
		if err := ValidateAvailable(n); err != nil {
			t.Errorf("ValidateAvailable(%d) = %v, want nil", n, err)
		}
	}
	for _, n := range []int64{-1, MaxAvailable + 1} {
		if err := ValidateAvailable(n); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateAvailable(%d) = %v, want ErrInvalid", n, err)
		}
	}
}

func TestShortages(t *testing.T) {
	lines := []Line{{"A", 3}, {"B", 2}, {"C", 1}, {"D", 5}}
	available := map[string]int64{"A": 1, "B": 2, "D": 4}
	want := []Shortage{{"A", 3, 1}, {"C", 1, 0}, {"D", 5, 4}}
	if diff := cmp.Diff(want, Shortages(lines, available)); diff != "" {
		t.Errorf("Shortages (-want +got):\n%s", diff)
	}
	if got := Shortages(lines, map[string]int64{"A": 3, "B": 2, "C": 1, "D": 5}); len(got) != 0 {
		t.Errorf("everything fits: Shortages = %v, want none", got)
	}
}

func TestReason(t *testing.T) {
	t.Run("names every shortage", func(t *testing.T) {
		got := Reason([]Shortage{{"SKU-1", 3, 1}, {"SKU-2", 1, 0}})
		want := "out of stock: SKU-1 (wanted 3, have 1), SKU-2 (wanted 1, have 0)"
		if got != want {
			t.Errorf("Reason = %q, want %q", got, want)
		}
	})
	t.Run("none", func(t *testing.T) {
		if got := Reason(nil); got != "out of stock" {
			t.Errorf("Reason(nil) = %q", got)
		}
	})
	for _, n := range []int{5, 6, 7, 8, 20, 100} {
		t.Run(fmt.Sprintf("%d long ids fit in %d bytes", n, MaxReasonLen), func(t *testing.T) {
			var s []Shortage
			for i := range n {
				s = append(s, Shortage{ProductID: fmt.Sprintf("%s-%03d", strings.Repeat("P", 60), i), Requested: 1_000_000, Available: 999_999})
			}
			got := Reason(s)
			if len(got) > MaxReasonLen {
				t.Fatalf("Reason is %d bytes, want at most %d: %q", len(got), MaxReasonLen, got)
			}
			named := strings.Count(got, "(wanted")
			if named == 0 {
				t.Fatalf("Reason names no product: %q", got)
			}
			if named < n && !strings.HasSuffix(got, fmt.Sprintf(", and %d more", n-named)) {
				t.Errorf("Reason names %d of %d without saying how many more: %q", named, n, got)
			}
		})
	}
}

func TestStatusNames(t *testing.T) {
	for s := StatusReserved; s <= StatusBlocked; s++ {
		got, err := ParseStatus(s.String())
		if err != nil || got != s {
			t.Errorf("ParseStatus(%q) = %v, %v; want %v", s.String(), got, err, s)
		}
	}
	for _, name := range []string{"NONE", "", "reserved", "Status(9)"} {
		if _, err := ParseStatus(name); !errors.Is(err, ErrInvalidStatus) {
			t.Errorf("ParseStatus(%q) error = %v, want ErrInvalidStatus", name, err)
		}
	}
}

func TestTransitions(t *testing.T) {
	short := []Shortage{{"A", 2, 1}}
	tests := []struct {
		name    string
		decide  func() (Decision, error)
		want    Decision
		wantErr error
	}{
		{"created, fits", func() (Decision, error) { return Reserve(StatusNone, nil), nil },
			Decision{Next: StatusReserved, Changed: true, Effect: EffectReserve}, nil},
		{"created, short", func() (Decision, error) { return Reserve(StatusNone, short), nil },
			Decision{Next: StatusFailed, Changed: true}, nil},
		{"created when blocked", func() (Decision, error) { return Reserve(StatusBlocked, nil), nil },
			Decision{Next: StatusBlocked}, nil},
		{"created again when reserved", func() (Decision, error) { return Reserve(StatusReserved, nil), nil },
			Decision{Next: StatusReserved}, nil},
		{"created again when failed", func() (Decision, error) { return Reserve(StatusFailed, nil), nil },
			Decision{Next: StatusFailed}, nil},
		{"confirmed when reserved", func() (Decision, error) { return Confirm(StatusReserved) },
			Decision{Next: StatusCommitted, Changed: true, Effect: EffectCommit}, nil},
		{"confirmed again", func() (Decision, error) { return Confirm(StatusCommitted) },
			Decision{Next: StatusCommitted}, nil},
		{"confirmed after release", func() (Decision, error) { return Confirm(StatusReleased) },
			Decision{Next: StatusReleased}, nil},
		{"confirmed when blocked", func() (Decision, error) { return Confirm(StatusBlocked) },
			Decision{Next: StatusBlocked}, nil},
		{"confirmed without reservation", func() (Decision, error) { return Confirm(StatusNone) },
			Decision{}, ErrNoReservation},
		{"released when reserved", func() (Decision, error) { return Release(StatusReserved), nil },
			Decision{Next: StatusReleased, Changed: true, Effect: EffectRelease, Released: true}, nil},
		{"released when committed", func() (Decision, error) { return Release(StatusCommitted), nil },
			Decision{Next: StatusReleased, Changed: true, Effect: EffectRestock, Released: true}, nil},
		{"released before created", func() (Decision, error) { return Release(StatusNone), nil },
			Decision{Next: StatusBlocked, Changed: true}, nil},
		{"released again", func() (Decision, error) { return Release(StatusReleased), nil },
			Decision{Next: StatusReleased}, nil},
		{"released when failed", func() (Decision, error) { return Release(StatusFailed), nil },
			Decision{Next: StatusFailed}, nil},
		{"released when blocked", func() (Decision, error) { return Release(StatusBlocked), nil },
			Decision{Next: StatusBlocked}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.decide()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEffectDeltas(t *testing.T) {
	tests := []struct {
		e                  Effect
		available, reserve int64
	}{
		{EffectNone, 0, 0},
		{EffectReserve, -3, 3},
		{EffectCommit, 0, -3},
		{EffectRelease, 3, -3},
		{EffectRestock, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.e.String(), func(t *testing.T) {
			a, r := tt.e.Deltas(3)
			if a != tt.available || r != tt.reserve {
				t.Errorf("Deltas(3) = %d, %d; want %d, %d", a, r, tt.available, tt.reserve)
			}
		})
	}
}
