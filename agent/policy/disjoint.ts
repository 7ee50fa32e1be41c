// nftables rejects overlapping elements in a concatenated interval set ("File exists"), and
// auto-merge would lose which entry an element came from. So overlapping (address, port)
// boxes are cut into disjoint ones, each labelled with every entry that covers it.

export interface Box {
  lo: bigint;
  hi: bigint;
  plo: number;
  phi: number;
  labels: string[];
}

/** "x/allow[9]" before "x/allow[10]". */
const byNumber = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

function sameLabels(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Disjoint port segments, with labels, of the boxes covering one address interval. */
function portSegments(boxes: readonly Box[]): { plo: number; phi: number; labels: string[] }[] {
  const cuts = new Set<number>();
  for (const b of boxes) {
    cuts.add(b.plo);
    cuts.add(b.phi + 1);
  }
  const points = [...cuts].sort((a, b) => a - b);
  const out: { plo: number; phi: number; labels: string[] }[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const plo = points[i] as number;
    const phi = (points[i + 1] as number) - 1;
    const labels = [...new Set(boxes.filter((b) => b.plo <= plo && phi <= b.phi).flatMap((b) => b.labels))].sort(byNumber);
    if (labels.length === 0) continue;
    const last = out[out.length - 1];
    if (last && last.phi + 1 === plo && sameLabels(last.labels, labels)) last.phi = phi;
    else out.push({ plo, phi, labels });
  }
  return out;
}

/** Cuts one cluster of address-overlapping boxes into disjoint boxes. */
function cutCluster(cluster: readonly Box[]): Box[] {
  const cuts = new Set<bigint>();
  for (const b of cluster) {
    cuts.add(b.lo);
    cuts.add(b.hi + 1n);
  }
  const points = [...cuts].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const out: Box[] = [];
  // Boxes open across the previous address slice, to extend instead of repeating them.
  let open: Box[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const lo = points[i] as bigint;
    const hi = (points[i + 1] as bigint) - 1n;
    const segs = portSegments(cluster.filter((b) => b.lo <= lo && hi <= b.hi));
    const next: Box[] = [];
    for (const s of segs) {
      const prev = open.find((o) => o.plo === s.plo && o.phi === s.phi && sameLabels(o.labels, s.labels) && o.hi + 1n === lo);
      if (prev) {
        prev.hi = hi;
        next.push(prev);
      } else {
        const box = { lo, hi, plo: s.plo, phi: s.phi, labels: s.labels };
        out.push(box);
        next.push(box);
      }
    }
    open = next;
  }
  return out;
}

/**
 * Returns disjoint boxes covering exactly the union of the input, each labelled with the
 * labels of every input box covering it. Boxes that overlap nothing come back unchanged.
 */
export function disjointBoxes(input: readonly Box[]): Box[] {
  const boxes = [...input].sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : a.plo - b.plo));
  const out: Box[] = [];
  let cluster: Box[] = [];
  let clusterHi = -1n;
  const flush = () => {
    if (cluster.length === 1) out.push({ ...(cluster[0] as Box), labels: [...(cluster[0] as Box).labels] });
    else if (cluster.length > 1) out.push(...cutCluster(cluster));
    cluster = [];
  };
  for (const b of boxes) {
    if (cluster.length > 0 && b.lo > clusterHi) flush();
    cluster.push(b);
    clusterHi = cluster.length === 1 || b.hi > clusterHi ? b.hi : clusterHi;
  }
  flush();
  return out;
}
