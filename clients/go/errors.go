package rewardserve

import (
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// RequestIDKey is the metadata key of the request id, sent by the client and echoed by the server.
const RequestIDKey = "x-request-id"

// RetryAfterKey is the trailing metadata of RESOURCE_EXHAUSTED: the retry delay in milliseconds.
const RetryAfterKey = "retry-after-ms"

// FieldViolation is one google.rpc.BadRequest field violation; Field is e.g. "inputs[1]".
type FieldViolation struct {
	Field       string
	Description string
}

// Error is every failed call (or, with ItemID, one failed StreamReward item).
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's message; for bad input it names the field and item.
	Message string
	// RequestID is the server's x-request-id, else the one this client sent.
	RequestID string
	// RetryDelay is how long the server asked callers to wait (RetryInfo, else retry-after-ms);
	// HasRetryDelay says whether it asked.
	RetryDelay    time.Duration
	HasRetryDelay bool
	// FieldViolations are the google.rpc.BadRequest details (INVALID_ARGUMENT).
	FieldViolations []FieldViolation
	// ItemID is the StreamReward item this error is about; empty for a whole call.
	ItemID string
	// Cause is the gRPC error.
	Cause error
}

func (e *Error) Error() string {
	text := fmt.Sprintf("%s: %s", e.Code, e.Message)
	if e.RequestID != "" {
		text += fmt.Sprintf(" (request id %s)", e.RequestID)
	}
	return text
}

// Unwrap returns the gRPC error.
func (e *Error) Unwrap() error { return e.Cause }

// GRPCStatus lets status.FromError / status.Code see through an *Error.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// toError decodes a failed call's status, details and metadata.
func toError(err error, sentID string, header, trailer metadata.MD) *Error {
	st, _ := status.FromError(err)
	out := &Error{Code: st.Code(), Message: st.Message(), RequestID: sentID, Cause: err}
	if ids := append(header.Get(RequestIDKey), trailer.Get(RequestIDKey)...); len(ids) > 0 {
		out.RequestID = ids[0]
	}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.RetryInfo:
			out.RetryDelay, out.HasRetryDelay = d.GetRetryDelay().AsDuration(), true
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations = append(out.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		}
	}
	if !out.HasRetryDelay {
		if values := trailer.Get(RetryAfterKey); len(values) > 0 {
			if ms, err := strconv.ParseFloat(values[0], 64); err == nil && ms >= 0 {
				out.RetryDelay, out.HasRetryDelay = time.Duration(ms*float64(time.Millisecond)), true
			}
		}
	}
	return out
}

// codesOf maps an ItemError's google.rpc.Code number to a codes.Code (UNKNOWN for an empty one).
func codesOf(code int32) codes.Code {
	if code == 0 {
		return codes.Unknown
	}
	return codes.Code(uint32(code))
}
