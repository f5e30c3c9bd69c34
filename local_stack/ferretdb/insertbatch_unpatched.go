//go:build !edgepipe_patched

package main

import "github.com/FerretDB/FerretDB/ferretdb"

// setInsertBatch: FerretDB's own Config has no insert batch size (fixed at
// 100); see insertbatch_patched.go.
func setInsertBatch(_ *ferretdb.Config, _ int) bool {
	return false
}
