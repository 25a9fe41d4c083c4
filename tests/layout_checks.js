// Collects visible text and finds overlaps and cuts; run by layout_checks.py with page.evaluate.
([tolerance, ignore]) => {
  const layered = ignore.join(",");
  const isLayered = (element) => layered && element.closest(layered) !== null;
  const visible = (element) =>
    element.checkVisibility({ opacityProperty: true, visibilityProperty: true, contentVisibilityAuto: true });
  const describe = (element) => {
    const parts = [];
    for (let node = element; node && node !== document.body && parts.length < 3; node = node.parentElement) {
      const testid = node.getAttribute && node.getAttribute("data-testid");
      const cls = typeof node.className === "string" ? node.className.trim().split(/\s+/)[0] : "";
      parts.push(node.tagName.toLowerCase() + (testid ? `[${testid}]` : cls ? `.${cls}` : ""));
      if (testid) break;
    }
    return parts.reverse().join(">");
  };
  // Plotly figures by name, so that a problem inside one figure can be told from one on the page.
  const figures = new Map();
  const figureOf = (element) => {
    const plot = element.closest(".js-plotly-plot");
    if (!plot) return null;
    if (!figures.has(plot)) {
      const title = plot.querySelector(".gtitle");
      const name = plot.id || (title && title.textContent.trim()) || "untitled";
      figures.set(plot, `figure ${figures.size + 1} (${name})`);
    }
    return figures.get(plot);
  };
  const quadOf = (r) => [[r.left, r.top], [r.right, r.top], [r.right, r.bottom], [r.left, r.bottom]];
  const boundsOf = (quad) => {
    const xs = quad.map((p) => p[0]), ys = quad.map((p) => p[1]);
    return { left: Math.min(...xs), top: Math.min(...ys), right: Math.max(...xs), bottom: Math.max(...ys) };
  };
  const svgQuad = (text) => {
    const box = text.getBBox();
    const ctm = text.getScreenCTM();
    if (!ctm) return null;
    const corners = [[box.x, box.y], [box.x + box.width, box.y],
                     [box.x + box.width, box.y + box.height], [box.x, box.y + box.height]];
    return corners.map(([x, y]) => [ctm.a * x + ctm.c * y + ctm.e, ctm.b * x + ctm.d * y + ctm.f]);
  };
  // The part of `bounds` left visible by the clipping ancestors of `element`, and whether an
  // ancestor that hides (not scrolls) its overflow cut some of it.
  const clipped = (element, bounds) => {
    let box = { ...bounds };
    let cutBy = null;
    for (let node = element; node && node !== document.documentElement; node = node.parentElement) {
      const style = getComputedStyle(node);
      const clipsX = style.overflowX !== "visible", clipsY = style.overflowY !== "visible";
      if (!clipsX && !clipsY) continue;
      const r = node.getBoundingClientRect();
      const isSvg = node instanceof SVGElement;
      const area = isSvg
        ? { left: r.left, top: r.top, right: r.right, bottom: r.bottom }
        : { left: r.left + node.clientLeft, top: r.top + node.clientTop,
            right: r.left + node.clientLeft + node.clientWidth, bottom: r.top + node.clientTop + node.clientHeight };
      const next = { ...box };
      if (clipsX) { next.left = Math.max(next.left, area.left); next.right = Math.min(next.right, area.right); }
      if (clipsY) { next.top = Math.max(next.top, area.top); next.bottom = Math.min(next.bottom, area.bottom); }
      // A box of a pixel or two is how pages hide text from the eye but not from screen readers.
      if (next.right - next.left < 2 || next.bottom - next.top < 2) return { box: null, cutBy: null };
      // Sideways, text half scrolled out of a box is cut as well (a row of chips or tabs that
      // scrolls); up and down, scrolling is how long content is read.
      const lostX = next.left - box.left > tolerance || box.right - next.right > tolerance;
      const lostY = next.top - box.top > tolerance || box.bottom - next.bottom > tolerance;
      const hidesY = ["hidden", "clip"].includes(style.overflowY) || (isSvg && clipsY);
      const lost = (lostX && clipsX) || (lostY && hidesY);
      if (lost && !cutBy) cutBy = node;
      box = next;
    }
    return { box, cutBy };
  };

  const items = [];
  const cuts = [];
  const add = (element, owner, text, quads) => {
    for (const quad of quads) {
      const bounds = boundsOf(quad);
      if (bounds.right - bounds.left < 1 || bounds.bottom - bounds.top < 1) continue;
      const { box, cutBy } = clipped(element, bounds);
      if (!box) continue;  // scrolled or clipped out of sight whole
      const where = describe(element);
      const figure = figureOf(element);
      if (cutBy) {
        const inside = figure !== null && figureOf(cutBy) === figure;
        cuts.push({ text, where, why: `clipped by ${describe(cutBy)}`, figure: inside ? figure : null });
      } else if (bounds.left < -tolerance || bounds.right > window.innerWidth + tolerance) {
        const span = `x ${Math.round(bounds.left)}..${Math.round(bounds.right)}, width ${window.innerWidth}`;
        cuts.push({ text, where, why: `outside the window (${span})`, figure: null });
      }
      const whole = ["left", "right", "top", "bottom"].every((side) => box[side] === bounds[side]);
      items.push({ owner, text, where, figure, quad: whole ? quad : quadOf(box), bounds: box });
    }
  };

  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const element = node.parentElement;
    const text = node.textContent.trim();
    if (!text || !element || element.closest("svg, script, style, noscript, template, title")) continue;
    if (isLayered(element) || !visible(element)) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    add(element, element, text, [...range.getClientRects()].map(quadOf));
    const style = getComputedStyle(element);
    const shortened = element.scrollWidth > element.clientWidth + 1 && style.overflowX !== "visible";
    if (style.textOverflow === "ellipsis" && shortened) {
      const where = describe(element);
      // Said once, as an ellipsis, rather than also as text its own box clips.
      for (let i = cuts.length - 1; i >= 0 && cuts[i].text === text && cuts[i].where === where; i--) cuts.pop();
      const why = `ellipsis (${element.scrollWidth} px of text in ${element.clientWidth} px)`;
      cuts.push({ text, where, why, figure: null });
    }
  }
  // A closed select box shows its choice in an input: cut when the choice is wider than the box.
  // Inputs one types into are left out: a long path there scrolls as the cursor moves.
  for (const input of document.querySelectorAll("input[role=combobox], input[readonly], input:disabled")) {
    if (!input.value || isLayered(input) || !visible(input)) continue;
    if (input.scrollWidth > input.clientWidth + 1)
      cuts.push({ text: input.value, where: describe(input),
                  why: `a choice of ${input.scrollWidth} px in a box of ${input.clientWidth} px`, figure: null });
  }
  for (const text of document.querySelectorAll("svg text")) {
    const content = text.textContent.trim();
    if (!content || isLayered(text) || !visible(text)) continue;
    let hidden = false;
    for (let node = text; node && !(node instanceof HTMLElement); node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.opacity === "0" || style.fillOpacity === "0" && style.strokeOpacity === "0") hidden = true;
    }
    const quad = svgQuad(text);
    if (!hidden && quad) add(text, text, content, [quad]);
  }

  // Separating axes: the overlap of two convex quads is the smallest overlap of their
  // projections on the edge normals of both.
  const depth = (p, q) => {
    let smallest = Infinity;
    for (const quad of [p, q]) {
      for (let i = 0; i < 4; i++) {
        const [x1, y1] = quad[i], [x2, y2] = quad[(i + 1) % 4];
        const length = Math.hypot(x2 - x1, y2 - y1);
        if (length < 1e-6) continue;
        const nx = (y1 - y2) / length, ny = (x2 - x1) / length;
        const project = (points) => points.map(([x, y]) => x * nx + y * ny);
        const a = project(p), b = project(q);
        const overlap = Math.min(Math.max(...a), Math.max(...b)) - Math.max(Math.min(...a), Math.min(...b));
        smallest = Math.min(smallest, overlap);
      }
    }
    return smallest;
  };
  const related = (a, b) => a.owner === b.owner || a.owner.contains(b.owner) || b.owner.contains(a.owner);
  const overlaps = [];
  const order = [...items].sort((a, b) => a.bounds.left - b.bounds.left);
  for (let i = 0; i < order.length; i++) {
    const a = order[i];
    for (let j = i + 1; j < order.length && order[j].bounds.left < a.bounds.right - tolerance; j++) {
      const b = order[j];
      if (b.bounds.top >= a.bounds.bottom - tolerance || a.bounds.top >= b.bounds.bottom - tolerance) continue;
      if (related(a, b)) continue;
      const d = depth(a.quad, b.quad);
      if (d > tolerance)
        overlaps.push({ first: a.text, first_where: a.where, first_figure: a.figure,
                        second: b.text, second_where: b.where, second_figure: b.figure, depth: d });
    }
  }
  return { texts: items.length, overlaps, cuts };
}
