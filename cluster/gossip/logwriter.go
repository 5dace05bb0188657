package gossip

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter carries memberlist's log.Logger lines ("[WARN] memberlist:
// ...") into slog. memberlist is chatty in normal operation, so its DEBUG
// and INFO lines are logged at debug; WARN and ERR keep their level.
type logWriter struct {
	log *slog.Logger
}

var levelPrefixes = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelDebug},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

// parseLogLine returns the level and the message of one memberlist line.
// A line without a known prefix is logged at info.
func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\r\n")
	level := slog.LevelInfo
	for _, p := range levelPrefixes {
		if strings.HasPrefix(line, p.prefix) {
			level = p.level
			line = strings.TrimSpace(line[len(p.prefix):])
			break
		}
	}
	return level, strings.TrimPrefix(line, "memberlist: ")
}

// Write logs one line; log.Logger calls it once per Printf.
func (w logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(string(p))
	ctx := context.Background()
	if w.log.Enabled(ctx, level) {
		w.log.Log(ctx, level, msg)
	}
	return len(p), nil
}
