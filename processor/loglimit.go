package processor

import (
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// logLimiter bounds warnings that can repeat per event (failed sends, rejections, fetch errors)
// so an outage does not turn into a log flood: at most perSecond lines a second, a burst of
// twice that, and lines past the limit are dropped. Metrics still count every one.
type logLimiter struct {
	log logrus.FieldLogger
	lim *rate.Limiter
}

func newLogLimiter(log logrus.FieldLogger, perSecond int) *logLimiter {
	return &logLimiter{log: log, lim: rate.NewLimiter(rate.Limit(perSecond), 2*perSecond)}
}

// WithFields returns an entry that logs only if the limiter allows it now.
func (l *logLimiter) WithFields(f logrus.Fields) logrus.FieldLogger {
	if l.lim.Allow() {
		return l.log.WithFields(f)
	}
	return discard
}

// WithError is WithFields for an error.
func (l *logLimiter) WithError(err error) logrus.FieldLogger {
	if l.lim.Allow() {
		return l.log.WithError(err)
	}
	return discard
}

func (l *logLimiter) Warnf(format string, args ...any) {
	if l.lim.Allow() {
		l.log.Warnf(format, args...)
	}
}

var discard = func() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(nopWriter{})
	l.SetLevel(logrus.PanicLevel)
	return l
}()

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
