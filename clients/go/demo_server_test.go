package rewardserve

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// demoTarget is the real demo server the tests call: REWARDSERVE_TARGET when the caller started
// one (make clients-test shares one across languages), else `rewardserve serve` on a free port
// from the project venv (REWARDSERVE_BIN), stopped after the tests.
var demoTarget string

var listening = regexp.MustCompile(`listening on \S*:(\d+)`)

func TestMain(m *testing.M) {
	stop, err := startDemoServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo server:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

func startDemoServer() (func(), error) {
	if target := os.Getenv("REWARDSERVE_TARGET"); target != "" {
		demoTarget = target
		return func() {}, waitReady()
	}
	cmd := exec.Command(os.Getenv("REWARDSERVE_BIN"), "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
		"--allow-request-chat-template") // the tests send request templates
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		if match := listening.FindStringSubmatch(lines.Text()); match != nil {
			demoTarget = "127.0.0.1:" + match[1]
			go func() { // keep draining the log so the server never blocks on a full pipe
				for lines.Scan() {
				}
			}()
			return stop, waitReady()
		}
	}
	stop()
	return nil, fmt.Errorf("rewardserve exited before listening")
}

// waitReady waits until the model is loaded (the port opens first).
func waitReady() error {
	client, err := Dial(demoTarget, Options{Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer client.Close()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, err := client.ModelInfo(context.Background())
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
