package rewardserve

import (
	"context"
	"errors"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/grpc/codes"
)

const scoreQuery = "What is the answer?"

func scoreDocs() []*pb.ScoreInput {
	return []*pb.ScoreInput{ScoreText("The answer is 42."), ScoreText("Step one: add the numbers."),
		ScoreText("good, bad, better, best")}
}

func TestScoreTextResultsInInputOrder(t *testing.T) {
	reply, err := dial(t).Score(context.Background(), ScoreText(scoreQuery), scoreDocs(), ScoreOptions{RequestID: "go-score-1"})
	if err != nil {
		t.Fatal(err)
	}
	// The demo model has one label and no reranker head: a cross-encoder reading each pair.
	if reply.RequestId != "go-score-1" || reply.Method != pb.ScoreMethod_SCORE_METHOD_CROSS_ENCODER || len(reply.Results) != 3 {
		t.Fatalf("unexpected reply: %v", reply)
	}
	for i, r := range reply.Results {
		if r.Index != uint32(i) || r.Logit == nil || r.NumTokens == 0 || r.Truncated {
			t.Fatalf("result %d: %v", i, r)
		}
		if want := 1 / (1 + math.Exp(-float64(*r.Logit))); math.Abs(float64(r.Score)-want) > 1e-5 {
			t.Fatalf("result %d: score %v is not sigmoid(logit %v)", i, r.Score, *r.Logit)
		}
	}
}

func TestScoreTopNReturnsTheBestFirst(t *testing.T) {
	client := dial(t)
	all, err := client.Score(context.Background(), ScoreText(scoreQuery), scoreDocs(), ScoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	best, err := client.Score(context.Background(), ScoreText(scoreQuery), scoreDocs(), ScoreOptions{TopN: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]*pb.ScoreResult(nil), all.Results...)
	sort.SliceStable(want, func(i, j int) bool { return want[i].Score > want[j].Score })
	if len(best.Results) != 2 {
		t.Fatalf("want 2 results, got %v", best.Results)
	}
	for i, r := range best.Results {
		if r.Index != want[i].Index || math.Abs(float64(r.Score-want[i].Score)) > 1e-5 {
			t.Fatalf("top %d: got %v, want %v", i, r, want[i])
		}
	}
}

func TestScoreTokenIDsAndTruncationKeepingTheQuery(t *testing.T) {
	client := dial(t)
	reply, err := client.Score(context.Background(), ScoreTokenIDs(11, 12, 13),
		[]*pb.ScoreInput{ScoreTokenIDs(20, 21), ScoreTokenIDs(30, 31, 32)}, ScoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(reply.Results) != 2 || reply.Results[1].NumTokens <= reply.Results[0].NumTokens {
		t.Fatalf("unexpected reply: %v", reply)
	}
	long := make([]uint32, 50)
	for i := range long {
		long[i] = uint32(10 + i)
	}
	cut := int32(20)
	reply, err = client.Score(context.Background(), ScoreTokenIDs(1, 2, 3), []*pb.ScoreInput{ScoreTokenIDs(long...)},
		ScoreOptions{Truncation: &pb.Truncation{TruncatePromptTokens: &cut}})
	if err != nil {
		t.Fatal(err)
	}
	if r := reply.Results[0]; !r.Truncated || r.NumTokens > 20 {
		t.Fatalf("not cut to 20 tokens: %v", r)
	}
}

func TestScoreServerRefusalNamesTheDocument(t *testing.T) {
	_, err := dial(t).Score(context.Background(), ScoreText(scoreQuery),
		[]*pb.ScoreInput{ScoreText("fine"), ScoreTokenIDs(1, 99999)}, ScoreOptions{RequestID: "go-score-bad"})
	var failure *Error
	if !errors.As(err, &failure) || failure.Code != codes.InvalidArgument || failure.RequestID != "go-score-bad" ||
		!strings.HasPrefix(failure.Message, "documents[1]") {
		t.Fatalf("unexpected error: %v", err)
	}
}

func TestScoreRefusalsBeforeSending(t *testing.T) {
	// Nothing listens on this target: a call that were sent would fail UNAVAILABLE.
	offline, err := Dial("127.0.0.1:9", Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer offline.Close()
	cases := []struct {
		query     *pb.ScoreInput
		documents []*pb.ScoreInput
		field     string
		message   string
	}{
		{ScoreText("q"), nil, "documents", "documents: must not be empty (score)"},
		{ScoreText("q"), []*pb.ScoreInput{}, "documents", "documents: must not be empty (score)"},
		{nil, []*pb.ScoreInput{ScoreText("d")}, "query", "query: expected text or token ids, got none"},
		{&pb.ScoreInput{}, []*pb.ScoreInput{ScoreText("d")}, "query", "query: expected text or token ids, got none"},
		{ScoreText("q"), []*pb.ScoreInput{ScoreText("d"), nil}, "documents[1]", "documents[1]: expected text or token ids, got none"},
	}
	for _, c := range cases {
		_, err := offline.Score(context.Background(), c.query, c.documents, ScoreOptions{})
		var failure *Error
		if !errors.As(err, &failure) || failure.Code != codes.InvalidArgument || failure.Message != c.message ||
			len(failure.FieldViolations) != 1 || failure.FieldViolations[0].Field != c.field {
			t.Fatalf("%s: unexpected error %v", c.message, err)
		}
	}
}
