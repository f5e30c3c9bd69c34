//go:build edgepipe_patched

package main

import "github.com/FerretDB/FerretDB/ferretdb"

// setInsertBatch sets the field our patch adds to FerretDB's embeddable
// Config (patches/ferretdb/ferretdb.go). mongo.sh builds with the patches and
// the tag edgepipe_patched; insertbatch_unpatched.go keeps a plain
// `go build`/`go vet`/`go test` of this directory working without them.
func setInsertBatch(c *ferretdb.Config, n int) bool {
	c.InsertBatchSize = n
	return true
}
