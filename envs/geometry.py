"""Small planar geometry helpers shared by the tasks and the scripted experts (numpy only).

Polygons are ``ndarray, shape (N, 2)`` with vertices in counter-clockwise order unless stated.
"""

from __future__ import annotations

import numpy as np


def rotation(yaw: float) -> np.ndarray:
    """2-D rotation matrix, shape (2, 2)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


def to_world(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Map body-frame points (N, 2) to the world with ``pose = (x, y, yaw)``; returns (N, 2)."""
    return points @ rotation(float(pose[2])).T + np.asarray(pose[:2], dtype=float)


def to_local(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_world`: world points (N, 2) -> body frame (N, 2)."""
    return (np.asarray(points, dtype=float) - np.asarray(pose[:2], dtype=float)) @ rotation(float(pose[2]))


def wrap_angle(a: float | np.ndarray, period: float = 2 * np.pi) -> float | np.ndarray:
    """Wrap an angle to ``[-period / 2, period / 2)``."""
    return (np.asarray(a) + period / 2) % period - period / 2


def box_polygon(half_x: float, half_y: float) -> np.ndarray:
    """Counter-clockwise corners of an axis-aligned box centred at the origin, shape (4, 2)."""
    return np.array([[-half_x, -half_y], [half_x, -half_y], [half_x, half_y], [-half_x, half_y]], dtype=float)


def polygon_area(poly: np.ndarray) -> float:
    """Signed area of a polygon (N, 2); positive when counter-clockwise."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def ensure_ccw(poly: np.ndarray) -> np.ndarray:
    """The same polygon with counter-clockwise vertex order."""
    return poly if polygon_area(poly) >= 0 else poly[::-1].copy()


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Intersection of two convex counter-clockwise polygons (Sutherland-Hodgman), shape (M, 2)."""
    out = [np.asarray(p, dtype=float) for p in subject]
    n = len(clip)
    for i in range(n):
        if not out:
            break
        a, b = clip[i], clip[(i + 1) % n]
        edge = b - a
        inp, out = out, []

        def side(p: np.ndarray, a: np.ndarray = a, edge: np.ndarray = edge) -> float:
            return edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0])

        prev = inp[-1]
        s_prev = side(prev)
        for cur in inp:
            s_cur = side(cur)
            if s_cur >= 0:
                if s_prev < 0:
                    out.append(prev + (cur - prev) * (s_prev / (s_prev - s_cur)))
                out.append(cur)
            elif s_prev >= 0:
                out.append(prev + (cur - prev) * (s_prev / (s_prev - s_cur)))
            prev, s_prev = cur, s_cur
    return np.array(out, dtype=float).reshape(-1, 2)


def convex_overlap_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the intersection of two convex counter-clockwise polygons."""
    return max(polygon_area(clip_convex(a, b)), 0.0)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of points (N, 2) (monotone chain), shape (H, 2)."""
    pts = sorted({(float(p[0]), float(p[1])) for p in points})
    if len(pts) <= 2:
        return np.array(pts, dtype=float)

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=float)


def inflate_convex(poly: np.ndarray, radius: float, arc_points: int = 3) -> np.ndarray:
    """Outer polygonal approximation of the Minkowski sum of a convex polygon and a disc.

    Every point of the true rounded sum lies inside the result (arc vertices are pushed out by
    ``1 / cos(half step)``), so paths around it keep at least ``radius`` of clearance.
    """
    poly = ensure_ccw(poly)
    n = len(poly)
    pts = []
    for i in range(n):
        prev_e = poly[i] - poly[i - 1]
        next_e = poly[(i + 1) % n] - poly[i]
        a0 = np.arctan2(prev_e[1], prev_e[0]) - np.pi / 2  # outward normal of the previous edge
        a1 = np.arctan2(next_e[1], next_e[0]) - np.pi / 2
        span = float(wrap_angle(a1 - a0)) % (2 * np.pi)
        steps = max(arc_points, 1)
        grow = radius / np.cos(span / (2 * steps)) if span > 0 else radius
        for k in range(steps + 1):
            a = a0 + span * k / steps
            pts.append(poly[i] + grow * np.array([np.cos(a), np.sin(a)]))
    return convex_hull(np.array(pts))


def point_in_convex(p: np.ndarray, poly: np.ndarray, eps: float = 0.0) -> bool:
    """True when ``p`` lies strictly inside the counter-clockwise convex polygon (by more than eps)."""
    edges = np.roll(poly, -1, axis=0) - poly
    rel = np.asarray(p, dtype=float) - poly
    cross = edges[:, 0] * rel[:, 1] - edges[:, 1] * rel[:, 0]
    lengths = np.linalg.norm(edges, axis=1)
    return bool(np.all(cross > eps * lengths))


def nearest_on_polygon(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Point of a polygon's boundary nearest to ``p``, shape (2,)."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", np.asarray(p) - a, ab) / np.einsum("ij,ij->i", ab, ab), 0.0, 1.0)
    closest = a + t[:, None] * ab
    return closest[int(np.argmin(np.linalg.norm(closest - np.asarray(p), axis=1)))]


def distance_to_polygon(p: np.ndarray, poly: np.ndarray) -> float:
    """Distance from ``p`` to a polygon's boundary, negative inside (convex polygons only)."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", np.asarray(p) - a, ab) / np.einsum("ij,ij->i", ab, ab), 0.0, 1.0)
    closest = a + t[:, None] * ab
    d = float(np.min(np.linalg.norm(closest - np.asarray(p), axis=1)))
    return -d if point_in_convex(p, poly) else d


def ray_exit_distance(origin: np.ndarray, direction: np.ndarray, poly: np.ndarray) -> float:
    """Distance along a unit ``direction`` from ``origin`` to where the ray leaves a convex polygon.

    Returns 0 when the origin is already outside.
    """
    if not point_in_convex(origin, poly):
        return 0.0
    best = np.inf
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        e = b - a
        normal = np.array([e[1], -e[0]])  # outward for a counter-clockwise polygon
        denom = float(normal @ direction)
        if denom > 1e-12:
            t = float(normal @ (a - origin)) / denom
            if 0 <= t < best:
                best = t
    return 0.0 if not np.isfinite(best) else best


def path_around_convex(start: np.ndarray, goal: np.ndarray, hull: np.ndarray) -> list[np.ndarray]:
    """Shortest polyline from ``start`` to ``goal`` (both outside the convex ``hull``) avoiding its interior.

    Returns the intermediate hull vertices followed by ``goal`` (``start`` excluded).
    """
    start = np.asarray(start, dtype=float)
    goal = np.asarray(goal, dtype=float)
    hull = ensure_ccw(hull)
    if not segment_crosses_convex(start, goal, hull):
        return [goal]
    n = len(hull)

    def visible(p: np.ndarray) -> np.ndarray:
        edges = np.roll(hull, -1, axis=0) - hull  # edge i: hull[i] -> hull[i + 1]
        rel = p - hull
        outside = edges[:, 0] * rel[:, 1] - edges[:, 1] * rel[:, 0] < 0  # p beyond edge i
        return outside | np.roll(outside, 1)  # vertex i touches edges i - 1 and i

    vis_s, vis_g = visible(start), visible(goal)
    best: tuple[float, list[np.ndarray]] = (np.inf, [goal])
    for direction in (1, -1):
        for i in np.flatnonzero(vis_s):
            length = float(np.linalg.norm(hull[i] - start))
            chain = [hull[i]]
            j = int(i)
            for _ in range(n):
                if vis_g[j]:
                    total = length + float(np.linalg.norm(goal - hull[j]))
                    if total < best[0]:
                        best = (total, [*chain, goal])
                    break
                k = (j + direction) % n
                length += float(np.linalg.norm(hull[k] - hull[j]))
                chain.append(hull[k])
                j = k
    return best[1]


def segment_crosses_convex(a: np.ndarray, b: np.ndarray, poly: np.ndarray) -> bool:
    """True when the open segment a-b passes through the interior of a convex counter-clockwise polygon."""
    t0, t1 = 0.0, 1.0
    d = b - a
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        e = q - p
        normal = np.array([e[1], -e[0]])  # outward
        num = float(normal @ (p - a))
        den = float(normal @ d)
        if abs(den) < 1e-12:
            if num <= 0:
                return False
            continue
        t = num / den
        if den > 0:
            t1 = min(t1, t)
        else:
            t0 = max(t0, t)
        if t1 - t0 <= 1e-9:
            return False
    return t1 - t0 > 1e-9


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    denom = float(ab @ ab)
    t = 0.0 if denom <= 0 else float(np.clip((p - a) @ ab / denom, 0.0, 1.0))
    return float(np.hypot(*(a + t * ab - p)))


def segment_polygon_distance(a: np.ndarray, b: np.ndarray, poly: np.ndarray) -> float:
    """Smallest distance between segment a-b and a convex counter-clockwise polygon (0 when they meet)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if point_in_convex(a, poly) or point_in_convex(b, poly) or segment_crosses_convex(a, b, poly):
        return 0.0
    n = len(poly)
    best = np.inf
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        best = min(
            best,
            _point_segment_distance(a, p, q),
            _point_segment_distance(b, p, q),
            _point_segment_distance(p, a, b),
            _point_segment_distance(q, a, b),
        )
    return best
