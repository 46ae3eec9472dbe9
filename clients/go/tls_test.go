package rewardserve

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	pb "github.com/rewardserve/rewardserve/clients/go/rewardservev1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

type tlsServer struct {
	pb.UnimplementedRewardServiceServer
}

func (tlsServer) GetModelInfo(context.Context, *pb.GetModelInfoRequest) (*pb.GetModelInfoResponse, error) {
	return &pb.GetModelInfoResponse{Model: "over-tls"}, nil
}

// selfSigned makes a certificate for 127.0.0.1 at test time.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func TestTLSWithTheServersCA(t *testing.T) {
	cert, pool := selfSigned(t)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	pb.RegisterRewardServiceServer(server, tlsServer{})
	go func() { _ = server.Serve(listener) }()
	defer server.Stop()

	client, _ := Dial(listener.Addr().String(), Options{TLS: &tls.Config{RootCAs: pool}})
	defer client.Close()
	info, err := client.ModelInfo(context.Background())
	if err != nil || info.Model != "over-tls" {
		t.Fatalf("%v %v", info, err)
	}

	untrusting, _ := Dial(listener.Addr().String(), Options{TLS: &tls.Config{}, Timeout: 2 * time.Second})
	defer untrusting.Close()
	if _, err := untrusting.ModelInfo(context.Background()); err == nil {
		t.Fatal("a self-signed certificate was trusted without its CA")
	}
}
