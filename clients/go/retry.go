package rewardserve

import (
	"context"
	"math"
	"time"

	"google.golang.org/grpc/codes"
)

// RetryPolicy is exponential backoff with jitter; the server's retry delay is a floor.
//
// Only UNAVAILABLE (not up, not warm, draining) and RESOURCE_EXHAUSTED (admission limit) are
// retried: both mean the work was not started, so a retry never computes anything twice.
// gRPC's own retries read no RetryInfo and stop once headers arrived (the server sends
// x-request-id early), so the loop is the client's.
type RetryPolicy struct {
	MaxRetries        int           // retries after the first attempt (default 3)
	InitialBackoff    time.Duration // default 100 ms
	MaxBackoff        time.Duration // default 5 s
	BackoffMultiplier float64       // default 2
	Jitter            float64       // the backoff is scaled by a factor in [1-Jitter, 1] (default 0.2)
}

// DefaultRetryPolicy is the policy of a zero Options.Retry.
var DefaultRetryPolicy = RetryPolicy{MaxRetries: 3, InitialBackoff: 100 * time.Millisecond,
	MaxBackoff: 5 * time.Second, BackoffMultiplier: 2, Jitter: 0.2}

// Retryable reports whether a failure with this code may be retried.
func Retryable(code codes.Code) bool {
	return code == codes.Unavailable || code == codes.ResourceExhausted
}

// WaitBeforeRetry is the wait before retry number retry (0-based), or false: fail now.
// timeLeft < 0 means no deadline; random returns a number in [0, 1).
func (p RetryPolicy) WaitBeforeRetry(retry int, err *Error, timeLeft time.Duration, random func() float64) (time.Duration, bool) {
	if !Retryable(err.Code) || retry >= p.MaxRetries {
		return 0, false
	}
	base := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.BackoffMultiplier, float64(retry)))
	wait := time.Duration(base * (1 - p.Jitter*random()))
	if err.HasRetryDelay {
		// The server knows when it will have room: jitter only ever adds to its delay.
		if floor := time.Duration(float64(err.RetryDelay) * (1 + p.Jitter*random())); floor > wait {
			wait = floor
		}
	}
	if timeLeft >= 0 && wait >= timeLeft {
		return 0, false // a retry could not finish in time: report the real cause
	}
	return wait, true
}

// withRetries runs attempt until it succeeds or must fail; ctx carries the deadline.
func withRetries(ctx context.Context, p RetryPolicy, random func() float64, attempt func(context.Context) *Error) *Error {
	for retry := 0; ; retry++ {
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		timeLeft := time.Duration(-1)
		if deadline, ok := ctx.Deadline(); ok {
			timeLeft = time.Until(deadline)
		}
		wait, ok := p.WaitBeforeRetry(retry, err, timeLeft, random)
		if !ok {
			return err
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return err
		case <-timer.C:
		}
	}
}
