package duration_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/duration"
)

const day = 24 * time.Hour

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"30s", 30 * time.Second},
		{"1s", time.Second},
		{"15m", 15 * time.Minute},
		{"24h", 24 * time.Hour},
		{"7d", 7 * day},
		{"2w", 14 * day},
		{"1mo", 30 * day},
		{"3mo", 90 * day},
		{"1y", 365 * day},
		{"292y", 292 * 365 * day},
		{"007d", 7 * day},
		{"9223372036s", 9223372036 * time.Second},
	}
	for _, tt := range tests {
		got, err := duration.Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %v, nil", tt.in, got, err, tt.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []string{
		"",
		"0s",
		"0y",
		"000mo",
		"-1h",
		"+1h",
		"1.5h",
		".5h",
		"1e3s",
		"10",
		"h",
		"mo",
		"1x",
		"1M",
		"1H",
		"1ms",
		"1us",
		"1ns",
		"1mon",
		"1yr",
		"1h30m",
		"1d1d",
		" 1h",
		"1h ",
		"1 h",
		"1\th",
		"1h\n",
		"１h", // fullwidth digit
		"293y",
		"999999999999y",
		"9223372036854775807s",
		"9223372036854775808s",
		"99999999999999999999999999999s",
		"106752d",
	}
	for _, in := range tests {
		got, err := duration.Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) = %v, nil; want error", in, got)
			continue
		}
		if !errors.Is(err, duration.ErrInvalid) {
			t.Errorf("Parse(%q) error %v does not wrap ErrInvalid", in, err)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, `invalid duration "`) || !strings.Contains(msg, "mo (30 days)") || !strings.Contains(msg, "e.g. 30s") {
			t.Errorf("Parse(%q) error message %q lacks input, units or example", in, msg)
		}
		if strings.ContainsAny(msg, "\n\t") {
			t.Errorf("Parse(%q) error message %q contains raw control characters", in, msg)
		}
	}
}

func TestParseMessage(t *testing.T) {
	_, err := duration.Parse("1.5h")
	want := `invalid duration "1.5h": use a whole number followed by one unit: s, m, h, d, w, mo (30 days), y (365 days), e.g. 30s, 15m, 3mo, 1y`
	if err == nil || err.Error() != want {
		t.Errorf("Parse(\"1.5h\") error = %v; want %s", err, want)
	}
	_, err = duration.Parse(strings.Repeat("9", 1000) + "s")
	if err == nil || len(err.Error()) > 300 {
		t.Errorf("long input not truncated in message: %v", err)
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{30 * time.Second, "30s"},
		{90 * time.Second, "90s"},
		{15 * time.Minute, "15m"},
		{36 * time.Hour, "36h"},
		{24 * time.Hour, "1d"},
		{7 * day, "1w"},
		{14 * day, "2w"},
		{35 * day, "5w"},
		{30 * day, "1mo"},
		{90 * day, "3mo"},
		{360 * day, "12mo"},
		{365 * day, "1y"},
		{730 * day, "2y"},
		{0, "0s"},
		{-time.Hour, "-1h0m0s"},
		{1500 * time.Millisecond, "1.5s"},
	}
	for _, tt := range tests {
		if got := duration.Format(tt.in); got != tt.want {
			t.Errorf("Format(%v) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"30s", "15m", "24h", "7d", "2w", "3mo", "1y", "1h30m", "0s", "-1h", "1.5h", "999999999999y", "292y", "", "mo"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := duration.Parse(s)
		if err != nil {
			if !errors.Is(err, duration.ErrInvalid) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if d <= 0 {
			t.Fatalf("Parse(%q) = %v; want > 0", s, d)
		}
		f := duration.Format(d)
		back, err := duration.Parse(f)
		if err != nil || back != d {
			t.Fatalf("Parse(Format(%v)) = Parse(%q) = %v, %v; want %v", d, f, back, err, d)
		}
	})
}
