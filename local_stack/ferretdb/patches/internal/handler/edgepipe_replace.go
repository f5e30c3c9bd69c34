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
// -overlay (see "Patches" in local_stack/README-mongo.md).
//
// An `update` command whose statements all replace one document by _id
// (a bulk of ReplaceOne({_id: x}, doc[, upsert])) is run as one query for all
// the _ids, one UpdateAll and one InsertAll, instead of a query and a write
// transaction per statement: upstream pays ~0.4-1.5 ms of CPU per upserted
// document, the batch ~20x less.

package handler

import (
	"context"
	"errors"

	"github.com/FerretDB/FerretDB/internal/backends"
	"github.com/FerretDB/FerretDB/internal/handler/common"
	"github.com/FerretDB/FerretDB/internal/types"
	"github.com/FerretDB/FerretDB/internal/util/iterator"
	"github.com/FerretDB/FerretDB/internal/util/must"
)

// edgepipeIDKey identifies a string or ObjectID _id (the _ids the SQLite
// backend's $in pushdown serves; any other kind keeps the upstream path).
func edgepipeIDKey(id any) (string, bool) {
	switch id := id.(type) {
	case string:
		return "s" + id, true
	case types.ObjectID:
		return "o" + string(id[:]), true
	}

	return "", false
}

// edgepipeReplaceByID runs params as a batch when every statement is a
// replacement of one document by a distinct string or ObjectID _id; ok false
// means it did nothing and the upstream path must run.
//
// Each stored document is the upstream path's: {_id, then the replacement's
// fields in order}; n counts matched plus upserted. Two counts follow MongoDB
// where upstream does not: nModified leaves out documents that were already
// identical (upstream counts and rewrites them), and upserted entries carry
// their statement's index (upstream numbers them 0, 1, ...).
//
// Not atomic across statements, as upstream's isn't. A document inserted or
// deleted by another client between the query and the writes makes the batch
// step aside (InsertAll fails whole on a duplicate _id, UpdateAll reports fewer
// rows); the upstream path then redoes every statement, which is harmless as
// replacements are idempotent, only its nModified may count the ones already
// written as unmodified.
func (h *Handler) edgepipeReplaceByID(ctx context.Context, c backends.Collection, params *common.UpdateParams) (
	ok bool, matched, modified int32, upserted *types.Array,
) {
	if h.DisablePushdown || len(params.Updates) < 2 {
		return false, 0, 0, nil
	}

	ids := types.MakeArray(len(params.Updates))
	keys := make([]string, len(params.Updates))
	seen := make(map[string]struct{}, len(params.Updates))

	for i, u := range params.Updates {
		if u.Multi || u.HasUpdateOperators || u.Update == nil || u.Filter == nil || u.Filter.Len() != 1 {
			return false, 0, 0, nil
		}

		id, getErr := u.Filter.Get("_id")
		if getErr != nil {
			return false, 0, 0, nil
		}

		key, idOK := edgepipeIDKey(id)
		if !idOK {
			return false, 0, 0, nil
		}

		// a different _id in the replacement is upstream's error to report
		if own, _ := u.Update.Get("_id"); own != nil && types.Compare(own, id) != types.Equal {
			return false, 0, 0, nil
		}

		if _, dup := seen[key]; dup {
			return false, 0, 0, nil // later statements see earlier ones
		}

		seen[key] = struct{}{}
		keys[i] = key
		ids.Append(id)
	}

	existing := make(map[string]*types.Document, len(params.Updates))

	res, err := c.Query(ctx, &backends.QueryParams{
		Filter: must.NotFail(types.NewDocument("_id", must.NotFail(types.NewDocument("$in", ids)))),
	})
	if err != nil {
		return false, 0, 0, nil
	}

	for {
		_, doc, nextErr := res.Iter.Next()
		if errors.Is(nextErr, iterator.ErrIteratorDone) {
			break
		}

		if nextErr != nil {
			res.Iter.Close()

			return false, 0, 0, nil
		}

		if key, idOK := edgepipeIDKey(must.NotFail(doc.Get("_id"))); idOK {
			existing[key] = doc
		}
	}

	res.Iter.Close()

	var toUpdate, toInsert []*types.Document

	upserted = types.MakeArray(0)

	for i, u := range params.Updates {
		id := must.NotFail(u.Filter.Get("_id"))
		old, found := existing[keys[i]]

		if !found && !u.Upsert {
			continue
		}

		doc := must.NotFail(types.NewDocument("_id", id))

		for _, k := range u.Update.Keys() {
			doc.Set(k, must.NotFail(u.Update.Get(k)))
		}

		if doc.ValidateData() != nil {
			return false, 0, 0, nil // upstream reports it
		}

		if found {
			matched++

			// MongoDB's nModified: upstream compares with the replacement, which
			// lacks the _id, so it counts (and writes) identical documents too
			if types.Compare(old, doc) != types.Equal {
				modified++
				toUpdate = append(toUpdate, doc)
			}

			continue
		}

		toInsert = append(toInsert, doc)
		upserted.Append(must.NotFail(types.NewDocument("index", int32(i), "_id", id)))
		matched++ // as upstream: an upsert counts in n
	}

	if len(toInsert) > 0 {
		if _, err := c.InsertAll(ctx, &backends.InsertAllParams{Docs: toInsert}); err != nil {
			return false, 0, 0, nil
		}
	}

	if len(toUpdate) > 0 {
		updated, updErr := c.UpdateAll(ctx, &backends.UpdateAllParams{Docs: toUpdate})
		if updErr != nil || updated.Updated != int32(len(toUpdate)) {
			return false, 0, 0, nil
		}
	}

	return true, matched, modified, upserted
}
