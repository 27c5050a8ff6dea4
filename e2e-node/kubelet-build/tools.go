//go:build tools

// Keeps the kubelet's packages in this module's build list (go mod tidy), so that
// `go build k8s.io/kubernetes/cmd/kubelet` resolves everything from go.mod and go.sum.
package tools

import _ "k8s.io/kubernetes/cmd/kubelet"
