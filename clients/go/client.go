// Package rewardserve is the Go client of rewardserve.v1: a thin Client over the generated
// stubs (package rewardservev1) with the behaviour every rewardserve client guarantees.
//
// Every call has a deadline (default 30 s, retries included, unless ctx has an earlier one);
// UNAVAILABLE and RESOURCE_EXHAUSTED are retried with backoff and never sooner than the server's
// RetryInfo / retry-after-ms; nothing else is retried and streams never are; every call sends an
// x-request-id (and the request's request_id), the same on each retry; replies up to 256 MiB are
// accepted (token-level replies pass gRPC's default 4 MiB); failures are *Error.
package rewardserve

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"io"
	mrand "math/rand"
	"sync"
	"time"

	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// DefaultTimeout is the deadline of a call when Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// DefaultMaxMessageBytes is the largest message read or written: the server sends up to 256 MiB.
const DefaultMaxMessageBytes = 256 << 20

// Options configure a Client; the zero value is plaintext with the defaults.
type Options struct {
	// Timeout is each call's deadline, retries included; zero: DefaultTimeout; negative: none.
	Timeout time.Duration
	// Retry is the retry policy; zero: DefaultRetryPolicy.
	Retry RetryPolicy
	// Metadata is sent with every call (e.g. "authorization": "Bearer ...").
	Metadata map[string]string
	// MaxMessageBytes bounds messages both ways; zero: DefaultMaxMessageBytes.
	MaxMessageBytes int
	// TLS enables TLS with this configuration; nil: plaintext.
	TLS *tls.Config
	// DialOptions are appended to the client's own.
	DialOptions []grpc.DialOption
}

// Client calls one rewardserve server. It is safe for concurrent use; Close it when done.
type Client struct {
	conn    *grpc.ClientConn
	stub    pb.RewardServiceClient
	opts    Options
	randMu  sync.Mutex
	randSrc *mrand.Rand
}

// Dial connects to target ("host:port"); the connection is made lazily.
func Dial(target string, opts Options) (*Client, error) {
	if opts.Retry == (RetryPolicy{}) {
		opts.Retry = DefaultRetryPolicy
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	dial := []grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(opts.MaxMessageBytes), grpc.MaxCallSendMsgSize(opts.MaxMessageBytes))}
	if opts.TLS != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)))
	} else {
		dial = append(dial, grpc.WithInsecure()) //nolint:staticcheck // grpc-go 1.33 has no insecure package
	}
	conn, err := grpc.Dial(target, append(dial, opts.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: pb.NewRewardServiceClient(conn), opts: opts,
		randSrc: mrand.New(mrand.NewSource(time.Now().UnixNano()))}, nil
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// Encode runs a pooling task (classify, token_classify, embed, token_embed) on texts or token ids.
// An empty req.RequestId is filled in (on req) and sent as x-request-id, the same on every retry.
func (c *Client) Encode(ctx context.Context, req *pb.EncodeRequest) (*pb.EncodeResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var reply *pb.EncodeResponse
	err := c.unary(ctx, req.RequestId, func(ctx context.Context, opts ...grpc.CallOption) (err error) {
		reply, err = c.stub.Encode(ctx, req, opts...)
		return err
	})
	return reply, err
}

// ChatReward scores conversations and/or groups rendered with the model's chat template.
// An empty req.RequestId is filled in (on req), as in Encode.
func (c *Client) ChatReward(ctx context.Context, req *pb.ChatRewardRequest) (*pb.ChatRewardResponse, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var reply *pb.ChatRewardResponse
	err := c.unary(ctx, req.RequestId, func(ctx context.Context, opts ...grpc.CallOption) (err error) {
		reply, err = c.stub.ChatReward(ctx, req, opts...)
		return err
	})
	return reply, err
}

// ModelInfo describes the served model.
func (c *Client) ModelInfo(ctx context.Context) (*pb.GetModelInfoResponse, error) {
	var reply *pb.GetModelInfoResponse
	err := c.unary(ctx, NewRequestID(), func(ctx context.Context, opts ...grpc.CallOption) (err error) {
		reply, err = c.stub.GetModelInfo(ctx, &pb.GetModelInfoRequest{}, opts...)
		return err
	})
	return reply, err
}

// NewRequestID returns a random request id (32 hex digits).
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// callContext applies the client's deadline (unless ctx has an earlier one) and metadata.
func (c *Client) callContext(ctx context.Context, requestID string) (context.Context, context.CancelFunc) {
	cancel := context.CancelFunc(func() {})
	timeout := c.opts.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	pairs := make([]string, 0, 2*len(c.opts.Metadata)+2)
	for k, v := range c.opts.Metadata {
		pairs = append(pairs, k, v)
	}
	return metadata.AppendToOutgoingContext(ctx, append(pairs, RequestIDKey, requestID)...), cancel
}

func (c *Client) random() float64 {
	c.randMu.Lock()
	defer c.randMu.Unlock()
	return c.randSrc.Float64()
}

type attemptFunc func(ctx context.Context, opts ...grpc.CallOption) error

func (c *Client) unary(ctx context.Context, requestID string, call attemptFunc) error {
	ctx, cancel := c.callContext(ctx, requestID)
	defer cancel()
	if err := withRetries(ctx, c.opts.Retry, c.random, func(ctx context.Context) *Error {
		var header, trailer metadata.MD
		if err := call(ctx, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
			return toError(err, requestID, header, trailer)
		}
		return nil
	}); err != nil {
		return err // a typed nil *Error must not become a non-nil error
	}
	return nil
}

// StreamResult is one StreamReward answer: Result on success, else Err (the stream goes on).
type StreamResult struct {
	ID     string
	Result *pb.ChatRewardResult
	Err    *Error
	Timing *pb.Timing
}

// Stream is an open StreamReward call; Recv answers in completion order until io.EOF.
type Stream struct {
	stream    pb.RewardService_StreamRewardClient
	cancel    context.CancelFunc
	requestID string
}

// StreamReward opens a StreamReward call, sends options and then each item of items (one per
// message) as fast as flow control allows, and closes the sending side when items is closed.
// Not retried. Cancel ctx (or call Stream.Close) to drop the server's queued work.
func (c *Client) StreamReward(ctx context.Context, options *pb.StreamRewardOptions, items <-chan *pb.StreamItem) (*Stream, error) {
	requestID := NewRequestID()
	ctx, cancel := c.callContext(ctx, requestID)
	stream, err := c.stub.StreamReward(ctx)
	if err != nil {
		cancel()
		return nil, toError(err, requestID, nil, nil)
	}
	s := &Stream{stream: stream, cancel: cancel, requestID: requestID}
	go s.send(options, items)
	return s, nil
}

func (s *Stream) send(options *pb.StreamRewardOptions, items <-chan *pb.StreamItem) {
	// A failed Send means the server ended the stream: Recv reports why.
	if options != nil && s.stream.Send(&pb.StreamRewardRequest{Options: options}) != nil {
		return
	}
	for item := range items {
		if s.stream.Send(&pb.StreamRewardRequest{Items: []*pb.StreamItem{item}}) != nil {
			return
		}
	}
	_ = s.stream.CloseSend()
}

// Recv returns the next answer, io.EOF after the last one, or the stream's *Error.
func (s *Stream) Recv() (*StreamResult, error) {
	answer, err := s.stream.Recv()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		header, _ := s.stream.Header()
		return nil, toError(err, s.requestID, header, s.stream.Trailer())
	}
	out := &StreamResult{ID: answer.GetId(), Timing: answer.GetTiming()}
	if result := answer.GetResult(); result != nil {
		out.Result = result
		return out, nil
	}
	failure := answer.GetError()
	out.Err = &Error{Code: codesOf(failure.GetCode()), Message: failure.GetMessage(), RequestID: s.requestID, ItemID: answer.GetId()}
	if failure.GetRetryAfterSeconds() > 0 {
		out.Err.RetryDelay = time.Duration(failure.GetRetryAfterSeconds() * float64(time.Second))
		out.Err.HasRetryDelay = true
	}
	return out, nil
}

// Close cancels the stream (the server drops its queued work) and releases its resources.
func (s *Stream) Close() { s.cancel() }
