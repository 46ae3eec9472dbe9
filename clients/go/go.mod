module github.com/rewardserve/rewardserve/clients/go

// The minimum for users with module access. CI builds and tests this package against Debian's
// Go 1.19, grpc-go 1.33 and protobuf-go 1.28 in GOPATH mode (clients/go/test.sh), where this
// file is not read; go.sum is made by the first `go mod tidy` of a user with module access.
go 1.22

require (
	google.golang.org/genproto/googleapis/rpc v0.0.0-20240814211410-ddb44dafa142
	google.golang.org/grpc v1.67.1
	google.golang.org/protobuf v1.35.1
)
