package jobs

import "context"

// SetDiskFree replaces the service's free-space probe, for tests.
func (s *Service) SetDiskFree(f func(dir string) (int64, bool, error)) { s.blobs.free = f }

// BatchNodes counts the units of a batch each node worked, for tests.
func (s *Service) BatchNodes(t interface{ Fatal(...any) }, id string) map[string]int {
	rows, err := s.db.query(context.Background(), `SELECT coalesce(node, ''), count(*) FROM converter_batch_unit
		WHERE batch_id = ? AND done = 1 GROUP BY node`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var node string
		var n int
		if err := rows.Scan(&node, &n); err != nil {
			t.Fatal(err)
		}
		out[node] = n
	}
	return out
}
