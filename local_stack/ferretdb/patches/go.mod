// Not a module to build: the .go files below are FerretDB v1.24.2 sources
// (patched copies and added files) that local_stack/mongo.sh lays over the
// module cache with `go build -overlay`. This go.mod only keeps them out of
// the wrapper module's `./...` (they import FerretDB's internal packages).
module edgepipe/local_stack/ferretdb/patches

go 1.24
