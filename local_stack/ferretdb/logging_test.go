package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestQuietHandlerAppliesAttrsAndGroupsInOrder(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(newQuietHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))

	base := l.With("a", 1).WithGroup("g")
	base.With("b", 2).Info("one")
	base.With("c", 3).Info("two") // a sibling must not see b

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", buf.String())
	}

	if !strings.Contains(lines[0], "msg=one a=1 g.b=2") {
		t.Errorf("first record: %q", lines[0])
	}

	if !strings.Contains(lines[1], "msg=two a=1 g.c=3") || strings.Contains(lines[1], "b=2") {
		t.Errorf("second record: %q", lines[1])
	}
}

// formatCounter counts how often its value is formatted.
type formatCounter struct{ n *int }

func (f formatCounter) LogValue() slog.Value {
	*f.n++
	return slog.StringValue("formatted")
}

func TestQuietHandlerFormatsNothingForDroppedRecords(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(newQuietHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))

	n := 0
	l.With(slog.Any("args", formatCounter{&n})).DebugContext(context.Background(), ">>> INSERT")

	if n != 0 || buf.Len() != 0 {
		t.Fatalf("a dropped debug record was formatted %d times: %q", n, buf.String())
	}

	l.With(slog.Any("args", formatCounter{&n})).Info("kept")

	if n != 1 || !strings.Contains(buf.String(), "args=formatted") {
		t.Fatalf("kept record: formatted %d times, %q", n, buf.String())
	}
}

func TestQuietHandlerDemotesConnectionChatter(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(newQuietHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))

	l.With("conn", "x").Info("Connection started")

	if buf.Len() != 0 {
		t.Fatalf("demoted record written: %q", buf.String())
	}
}
