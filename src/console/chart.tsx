// A uPlot time-series chart of the last 15 minutes, updated in place each second.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';

export interface Series {
  label: string;
  values: Array<number | null>;
  unit: (v: number) => string;
  stroke: string;
  dash?: number[];
  /** Series with another unit get their own scale and a right-hand axis. */
  scale?: string;
}

export function Chart({ title, t, series, testId }: { title: string; t: number[]; series: Series[]; testId: string }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const data = [t, ...series.map((s) => s.values)] as uPlot.AlignedData;
  useEffect(() => {
    const width = Math.max(280, Math.min(560, (el.current?.clientWidth ?? 560) - 8));
    plot.current = new uPlot(
      {
        width,
        height: 180,
        title,
        series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, dash: s.dash, scale: s.scale ?? 'y', value: (_u: uPlot, v: number | null) => (v === null ? '-' : s.unit(v)) }))],
        axes: [
          {},
          ...series
            .filter((s, i) => i === 0 || s.scale)
            .map((s, i) => ({ scale: s.scale ?? 'y', side: i === 0 ? 3 : 1, grid: { show: i === 0 }, values: (_u: uPlot, ticks: number[]) => ticks.map((v) => s.unit(v)), size: 80 })),
        ],
        scales: { x: { time: true } },
      },
      data,
      el.current!,
    );
    return () => plot.current?.destroy();
  }, [series.length]);
  useEffect(() => {
    plot.current?.setData(data);
    if (el.current) el.current.dataset.points = String(t.length);
    if (el.current) el.current.dataset.last = JSON.stringify(series.map((s) => s.values[s.values.length - 1] ?? null));
    if (el.current) el.current.dataset.max = String(Math.max(0, ...series[0]!.values.map((v) => v ?? 0)));
  });
  return <div class="chart" ref={el} data-testid={testId} role="img" aria-label={`${title}: ${series.map((s) => `${s.label} ${s.values.length ? (s.values[s.values.length - 1] === null ? '-' : s.unit(s.values[s.values.length - 1]!)) : '-'}`).join(', ')}`} />;
}
