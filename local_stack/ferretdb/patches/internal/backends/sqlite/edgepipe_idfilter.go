// Copyright 2021 FerretDB Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// edgepipe patch: this whole file is added to FerretDB v1.24.2 by the build's
// -overlay (see "Patches" in local_stack/README-mongo.md). It
// holds the _id filter pushdown that Query and Explain in collection.go used
// to spell out twice, extended to {_id: {$in: [...]}}.

package sqlite

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/FerretDB/FerretDB/internal/backends/sqlite/metadata"
	"github.com/FerretDB/FerretDB/internal/handler/sjson"
	"github.com/FerretDB/FerretDB/internal/types"
	"github.com/FerretDB/FerretDB/internal/util/must"
)

// edgepipeMaxInVars is the longest $in list bound as one SQL variable per
// element. SQLite refuses statements with more than 32,766 variables (its
// compiled default, also in modernc.org/sqlite); longer lists are passed as a
// single JSON array argument instead (see prepareIDWhereClause).
const edgepipeMaxInVars = 10_000

// prepareIDWhereClause returns the WHERE clause and its arguments for the part
// of filter that can be pushed down to SQL, and whether there is one.
//
// Pushed down (filter has exactly one key, _id):
//   - {_id: <string|ObjectID>} as `_ferretdb_sjson->'$._id' = ?` (FerretDB's own rule);
//   - {_id: {$in: [...]}} as `_ferretdb_sjson->'$._id' IN (?, ...)` when every
//     element is a string or an ObjectID.
//
// Both use the very expression metadata.IDColumn, so the expression index the
// edgepipe wrapper adds on it (idindex.go) serves them. Anything else returns
// "", nil, false: the whole table is read, as before.
//
// The pushed-down clause only narrows the rows read: every caller (find,
// count, distinct, delete, update, findAndModify, aggregate's $match) still
// applies the full filter to each document in Go, so a superset would be
// harmless; this clause selects exactly the matching documents anyway.
func prepareIDWhereClause(filter *types.Document) (string, []any, bool) {
	if filter.Len() != 1 {
		return "", nil, false
	}

	v, err := filter.Get("_id")
	if err != nil {
		return "", nil, false
	}

	switch v := v.(type) {
	case string, types.ObjectID:
		return fmt.Sprintf(` WHERE %s = ?`, metadata.IDColumn), []any{string(must.NotFail(sjson.MarshalSingleValue(v)))}, true

	case *types.Document:
		return prepareIDInClause(v)
	}

	return "", nil, false
}

// prepareIDInClause handles the value of _id when it is a document: only
// {$in: [string|ObjectID, ...]} is pushed down.
func prepareIDInClause(cond *types.Document) (string, []any, bool) {
	// Len first: Get panics on a duplicated key, which Len == 1 rules out.
	if cond.Len() != 1 || cond.Keys()[0] != "$in" {
		return "", nil, false
	}

	arr, ok := must.NotFail(cond.Get("$in")).(*types.Array)
	if !ok {
		return "", nil, false // FerretDB reports the error when filtering
	}

	// the values as stored by sjson, e.g. `"abc"` or `{"$o":"5f..."}`
	values := make([]string, arr.Len())

	for i := range values {
		e := must.NotFail(arr.Get(i))

		switch e.(type) {
		case string, types.ObjectID:
			values[i] = string(must.NotFail(sjson.MarshalSingleValue(e)))
		default:
			// a number, null, regex, document...: MongoDB's comparison rules
			// (e.g. 1 == 1.0) differ from the text comparison here; keep the
			// old path for the whole filter.
			return "", nil, false
		}
	}

	// SQLite accepts an empty list: `x IN ()` is false, no row is read.
	if len(values) <= edgepipeMaxInVars {
		args := make([]any, len(values))
		for i, s := range values {
			args[i] = s
		}

		placeholders := strings.TrimSuffix(strings.Repeat("?, ", len(values)), ", ")

		return fmt.Sprintf(` WHERE %s IN (%s)`, metadata.IDColumn, placeholders), args, true
	}

	// Too many for one variable each: one JSON array of the sjson texts;
	// json_each's `value` is each text unquoted, i.e. the sjson text itself.
	// SQLite still looks each one up in the index (IN with a subquery).
	list := string(must.NotFail(json.Marshal(values)))

	return fmt.Sprintf(` WHERE %s IN (SELECT value FROM json_each(?))`, metadata.IDColumn), []any{list}, true
}
