package payment

import (
	"errors"
	"testing"
)

func TestStatusNames(t *testing.T) {
	for s := StatusCharged; s <= StatusBlocked; s++ {
		got, err := ParseStatus(s.String())
		if err != nil || got != s {
			t.Errorf("ParseStatus(%q) = %v, %v; want %v", s.String(), got, err, s)
		}
	}
	for _, name := range []string{"NONE", "", "charged", "Status(9)"} {
		if _, err := ParseStatus(name); !errors.Is(err, ErrInvalidStatus) {
			t.Errorf("ParseStatus(%q) error = %v, want ErrInvalidStatus", name, err)
		}
	}
}

func TestActions(t *testing.T) {
	tests := []struct {
		status      Status
		onCreated   Action
		onEnded     Action
		description string
	}{
		{StatusNone, ActionCharge, ActionBlock, "unseen: charge on created, block on rejected/cancelled"},
		{StatusCharged, ActionNone, ActionRefund, "charged: never again, refund on rejected/cancelled"},
		{StatusFailed, ActionNone, ActionNone, "declined: nothing to charge again or refund"},
		{StatusRefunded, ActionNone, ActionNone, "refunded: refund once only"},
		{StatusBlocked, ActionNone, ActionBlock, "blocked: never charged, blocked again (looking for a charge again) on rejected/cancelled"},
	}
	for _, tt := range tests {
		t.Run(tt.status.String(), func(t *testing.T) {
			if got := OnCreated(tt.status); got != tt.onCreated {
				t.Errorf("OnCreated = %v, want %v (%s)", got, tt.onCreated, tt.description)
			}
			if got := OnEnded(tt.status); got != tt.onEnded {
				t.Errorf("OnEnded = %v, want %v (%s)", got, tt.onEnded, tt.description)
			}
		})
	}
}
