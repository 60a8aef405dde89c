// wsi-pixelcam report index: sort by a column, filter by status, class or slide id, page.
// Rows outside the current page stay hidden, so their lazy images are never fetched.
"use strict";
(function () {
  const table = document.getElementById("slides");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const pageSize = Number(table.dataset.pageSize) || 50;
  const status = document.getElementById("filter-status");
  const cls = document.getElementById("filter-class");
  const text = document.getElementById("filter-text");
  const info = document.getElementById("page-info");
  const prev = document.getElementById("page-prev");
  const next = document.getElementById("page-next");
  let page = 0;
  let sorted = { column: -1, direction: 1 };

  function matches(row) {
    const query = text.value.trim().toLowerCase();
    return (!status.value || row.dataset.status === status.value) &&
      (!cls.value || row.dataset.class === cls.value) &&
      (!query || row.cells[0].dataset.value.toLowerCase().includes(query));
  }

  function render() {
    const shown = rows.filter(matches);
    const pages = Math.max(1, Math.ceil(shown.length / pageSize));
    page = Math.min(page, pages - 1);
    const first = page * pageSize;
    rows.forEach((row) => { row.hidden = true; });
    shown.slice(first, first + pageSize).forEach((row) => { row.hidden = false; });
    info.textContent = shown.length + " of " + rows.length + " slides, page " +
      (page + 1) + " of " + pages;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  function value(row, column, numeric) {
    const raw = row.cells[column].dataset.value;
    if (!numeric) return raw.toLowerCase();
    return raw === "" ? Number.NEGATIVE_INFINITY : Number(raw);
  }

  function sortBy(column, numeric) {
    sorted.direction = sorted.column === column ? -sorted.direction : 1;
    sorted.column = column;
    rows.sort((a, b) => {
      const x = value(a, column, numeric);
      const y = value(b, column, numeric);
      return (x < y ? -1 : x > y ? 1 : 0) * sorted.direction;
    });
    const ordered = document.createDocumentFragment();
    rows.forEach((row) => ordered.appendChild(row));
    body.appendChild(ordered);
    table.querySelectorAll("th").forEach((th, i) => {
      th.removeAttribute("aria-sort");
      if (i === column) th.setAttribute("aria-sort", sorted.direction > 0 ? "ascending" : "descending");
    });
    page = 0;
    render();
  }

  table.querySelectorAll("th").forEach((th, column) => {
    if (!th.dataset.sort) return;
    th.classList.add("sortable");
    th.addEventListener("click", () => sortBy(column, th.dataset.sort === "num"));
  });
  [status, cls].forEach((el) => el.addEventListener("change", () => { page = 0; render(); }));
  text.addEventListener("input", () => { page = 0; render(); });
  prev.addEventListener("click", () => { page -= 1; render(); });
  next.addEventListener("click", () => { page += 1; render(); });
  render();
})();
