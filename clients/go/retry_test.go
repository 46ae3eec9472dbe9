package rewardserve

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// failingServer is a real gRPC server whose GetModelInfo fails on purpose, recording attempts.
type failingServer struct {
	pb.UnimplementedRewardServiceServer
	mu       sync.Mutex
	failures []error
	trailer  metadata.MD // sent with each failure
	attempts []attempt
}

type attempt struct {
	at        time.Time
	requestID string
	token     string
}

func (s *failingServer) GetModelInfo(ctx context.Context, _ *pb.GetModelInfoRequest) (*pb.GetModelInfoResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts = append(s.attempts, attempt{time.Now(), first(md.Get(RequestIDKey)), first(md.Get("authorization"))})
	if len(s.failures) > 0 {
		err := s.failures[0]
		s.failures = s.failures[1:]
		_ = grpc.SetTrailer(ctx, s.trailer)
		return nil, err
	}
	return &pb.GetModelInfoResponse{Model: "fake"}, nil
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}

func startFailing(t *testing.T, failures ...error) (*failingServer, string) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &failingServer{failures: failures}
	server := grpc.NewServer()
	pb.RegisterRewardServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return fake, listener.Addr().String()
}

func overloaded(t *testing.T, delay time.Duration) error {
	st, err := status.New(codes.ResourceExhausted, "queue full").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestResourceExhaustedWaitsForRetryInfoWithTheSameRequestID(t *testing.T) {
	fake, target := startFailing(t, overloaded(t, 300*time.Millisecond), overloaded(t, 300*time.Millisecond))
	client, _ := Dial(target, Options{Metadata: map[string]string{"authorization": "Bearer t0ken"}})
	defer client.Close()
	if _, err := client.ModelInfo(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.attempts) != 3 {
		t.Fatalf("%d attempts", len(fake.attempts))
	}
	for i := 1; i < 3; i++ {
		if gap := fake.attempts[i].at.Sub(fake.attempts[i-1].at); gap < 295*time.Millisecond {
			t.Fatalf("retried after %v", gap)
		}
		if fake.attempts[i].requestID != fake.attempts[0].requestID || fake.attempts[i].token != "Bearer t0ken" {
			t.Fatalf("attempt %d: %+v", i, fake.attempts[i])
		}
	}
}

func TestRetryAfterMsTrailerIsHonoured(t *testing.T) {
	fake, target := startFailing(t, status.Error(codes.ResourceExhausted, "busy"))
	fake.trailer = metadata.Pairs(RetryAfterKey, "250") // no RetryInfo: the trailer alone
	client, _ := Dial(target, Options{})
	defer client.Close()
	if _, err := client.ModelInfo(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.attempts) != 2 || fake.attempts[1].at.Sub(fake.attempts[0].at) < 245*time.Millisecond {
		t.Fatalf("attempts %+v", fake.attempts)
	}
}

func TestOnlyUnavailableAndResourceExhaustedAreRetried(t *testing.T) {
	for _, code := range []codes.Code{codes.InvalidArgument, codes.Internal, codes.DeadlineExceeded, codes.AlreadyExists} {
		fake, target := startFailing(t, status.Error(code, "no"))
		client, _ := Dial(target, Options{Retry: RetryPolicy{MaxRetries: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, BackoffMultiplier: 1}})
		_, err := client.ModelInfo(context.Background())
		client.Close()
		var failure *Error
		if !errors.As(err, &failure) || failure.Code != code || len(fake.attempts) != 1 {
			t.Fatalf("%v: %v after %d attempts", code, err, len(fake.attempts))
		}
	}
	fake, target := startFailing(t, status.Error(codes.Unavailable, "a"), status.Error(codes.Unavailable, "b"), status.Error(codes.Unavailable, "c"))
	client, _ := Dial(target, Options{Retry: RetryPolicy{MaxRetries: 2, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, BackoffMultiplier: 1}})
	defer client.Close()
	if _, err := client.ModelInfo(context.Background()); status.Code(err) != codes.Unavailable || len(fake.attempts) != 3 {
		t.Fatalf("%v after %d attempts", err, len(fake.attempts))
	}
}

func TestARetryDelayPastTheDeadlineRaisesTheRealCause(t *testing.T) {
	fake, target := startFailing(t, overloaded(t, 5*time.Second))
	client, _ := Dial(target, Options{Timeout: time.Second})
	defer client.Close()
	started := time.Now()
	_, err := client.ModelInfo(context.Background())
	var failure *Error
	if !errors.As(err, &failure) || failure.Code != codes.ResourceExhausted || failure.RetryDelay != 5*time.Second {
		t.Fatalf("got %v", err)
	}
	if time.Since(started) > 900*time.Millisecond || len(fake.attempts) != 1 {
		t.Fatalf("waited %v, %d attempts", time.Since(started), len(fake.attempts))
	}
}
