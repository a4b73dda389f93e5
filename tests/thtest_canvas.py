"""What a canvas shows, read in the page (shared by the browser tests)."""

# Fraction of non-white pixels and number of distinct colours of a <canvas>.
PIXELS_JS = """(canvas) => {
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const colors = new Set();
  let painted = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && !(d[i] > 250 && d[i + 1] > 250 && d[i + 2] > 250)) painted++;
    if (i % 64 === 0) colors.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
  }
  return {painted: painted / (d.length / 4), colors: colors.size};
}"""
