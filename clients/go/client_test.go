package rewardserve

import (
	"context"
	"errors"
	"io"
	"sort"
	"testing"
	"time"

	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
)

func dial(t *testing.T) *Client {
	t.Helper()
	client, err := Dial(demoTarget, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func text(s string) *pb.EncodeInput { return &pb.EncodeInput{Input: &pb.EncodeInput_Text{Text: s}} }

func tokens(ids ...uint32) *pb.EncodeInput {
	return &pb.EncodeInput{Input: &pb.EncodeInput_TokenIds{TokenIds: &pb.TokenIds{Ids: ids}}}
}

func msg(role, content string) *pb.ChatMessage { return &pb.ChatMessage{Role: role, Content: content} }

func TestModelInfo(t *testing.T) {
	info, err := dial(t).ModelInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Architecture != "Qwen3ForSequenceClassification" || len(info.Labels) != 1 {
		t.Fatalf("unexpected model info: %v", info)
	}
}

func TestEncodeKeepsOrderAndEchoesRequestID(t *testing.T) {
	reply, err := dial(t).Encode(context.Background(), &pb.EncodeRequest{
		Task: pb.PoolingTask_POOLING_TASK_CLASSIFY, Inputs: []*pb.EncodeInput{text("hello world"), tokens(5, 6, 7)},
		RequestId: "go-encode-1"})
	if err != nil {
		t.Fatal(err)
	}
	if reply.RequestId != "go-encode-1" || reply.Results[1].Index != 1 || reply.Results[1].NumTokens != 3 {
		t.Fatalf("unexpected reply: %v", reply)
	}
}

func TestLargeTokenEmbedReplyPassesTheDefault4MiB(t *testing.T) {
	ids := make([]uint32, 1000)
	for i := range ids {
		ids[i] = uint32(i*7) % 400
	}
	inputs := make([]*pb.EncodeInput, 17) // 17 x 1000 tokens x 64 dims x 4 bytes: 4.35 MB
	for i := range inputs {
		inputs[i] = tokens(ids...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reply, err := dial(t).Encode(ctx, &pb.EncodeRequest{Task: pb.PoolingTask_POOLING_TASK_TOKEN_EMBED, Inputs: inputs})
	if err != nil {
		t.Fatal(err)
	}
	floats := 0
	for _, r := range reply.Results {
		floats += len(r.Data.Values)
	}
	if floats*4 <= 4<<20 {
		t.Fatalf("only %d bytes of floats", floats*4)
	}
}

func TestChatTemplateKwargsReachTheTemplate(t *testing.T) {
	template := "{% if shout %}LOUD LOUD LOUD {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
	request := func(kwargs *structpb.Struct) *pb.ChatRewardRequest {
		return &pb.ChatRewardRequest{ChatTemplate: template, ChatTemplateKwargs: kwargs,
			Conversations: []*pb.Conversation{{Messages: []*pb.ChatMessage{msg("user", "hi"), msg("assistant", "there")}}}}
	}
	kwargs, _ := structpb.NewStruct(map[string]interface{}{"shout": true})
	client := dial(t)
	plain, err := client.ChatReward(context.Background(), request(nil))
	if err != nil {
		t.Fatal(err)
	}
	shouted, err := client.ChatReward(context.Background(), request(kwargs))
	if err != nil {
		t.Fatal(err)
	}
	if shouted.Results[0].NumTokens <= plain.Results[0].NumTokens {
		t.Fatalf("kwargs ignored: %d vs %d tokens", shouted.Results[0].NumTokens, plain.Results[0].NumTokens)
	}
}

func TestBadInputIsInvalidArgumentNamingTheField(t *testing.T) {
	started := time.Now()
	_, err := dial(t).Encode(context.Background(), &pb.EncodeRequest{
		Inputs: []*pb.EncodeInput{text("ok"), tokens(1, 99999)}, RequestId: "go-bad-1"})
	var failure *Error
	if !errors.As(err, &failure) {
		t.Fatalf("not an *Error: %v", err)
	}
	if failure.Code != codes.InvalidArgument || failure.RequestID != "go-bad-1" ||
		len(failure.FieldViolations) != 1 || failure.FieldViolations[0].Field != "inputs[1]" {
		t.Fatalf("unexpected error: %+v", failure)
	}
	if time.Since(started) > 5*time.Second {
		t.Fatal("INVALID_ARGUMENT was retried")
	}
}

func TestDeadlineExceeded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err := dial(t).Encode(ctx, &pb.EncodeRequest{Inputs: []*pb.EncodeInput{text("too late")}})
	var failure *Error
	if !errors.As(err, &failure) || failure.Code != codes.DeadlineExceeded {
		t.Fatalf("want DEADLINE_EXCEEDED, got %v", err)
	}
}

func TestStreamAnswersEveryItemAndGoesOnAfterAFailedOne(t *testing.T) {
	items := make(chan *pb.StreamItem, 3)
	items <- &pb.StreamItem{Id: "a", GroupId: "g", Conversation: &pb.Conversation{Messages: []*pb.ChatMessage{msg("user", "hi"), msg("assistant", "hello")}}}
	items <- &pb.StreamItem{Id: "bad", Conversation: &pb.Conversation{Messages: []*pb.ChatMessage{msg("robot", "x")}}}
	items <- &pb.StreamItem{Id: "b", Conversation: &pb.Conversation{Messages: []*pb.ChatMessage{msg("user", "bye"), msg("assistant", "ciao")}}}
	close(items)
	stream, err := dial(t).StreamReward(context.Background(), &pb.StreamRewardOptions{MaxInFlight: 2}, items)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	answers := map[string]*StreamResult{}
	for {
		answer, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		answers[answer.ID] = answer
	}
	ids := make([]string, 0, len(answers))
	for id := range answers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) != 3 || answers["a"].Result.GetGroupId() != "g" || answers["b"].Result == nil {
		t.Fatalf("unexpected answers: %v", ids)
	}
	if bad := answers["bad"].Err; bad == nil || bad.Code != codes.InvalidArgument || bad.ItemID != "bad" {
		t.Fatalf("unexpected item error: %+v", answers["bad"])
	}
}
