// Drives klagg with ccxt as a user would, pointed at klagg instead of
// Binance: loadMarkets, fetchOHLCV with paging, and ccxt pro's watchOHLCV
// until a candle closes. Prints one JSON object; the Go test compares it
// with the fake exchange's reference klines.
//
// node ccxt.mjs <http base> <symbol id> <since ms> <pages> <page size>
// node ccxt.mjs <http base> <symbol id> <since ms> latest <n>: only the
// latest n candles of 1m and 1h, and 10 of 1m from since
import ccxt from 'ccxt';

const [base, id, since, pages, pageSize] = process.argv.slice(2);
const ws = base.replace(/^http/, 'ws');
const ex = new ccxt.pro.binanceusdm({ enableRateLimit: false, timeout: 30000 });
// The base URLs are all a user changes: every path stays ccxt's own.
for (const k of Object.keys(ex.urls.api)) {
  if (typeof ex.urls.api[k] === 'string' && /^https:\/\/fapi\.binance\.com/.test(ex.urls.api[k])) {
    ex.urls.api[k] = ex.urls.api[k].replace('https://fapi.binance.com', base);
  }
}
ex.urls.api.ws.future = ws + '/ws';

// ccxt wants its HTTP agent loaded for plain ws:// URLs (klagg on loopback).
await ex.loadHttpProxyAgent();

const out = {};
const markets = await ex.loadMarkets();
const market = ex.markets_by_id[id][0];
out.markets = Object.keys(markets).length;
out.market = { symbol: market.symbol, precision: market.precision, limits: market.limits };

// "latest": what a user asks first, the moment klagg is ready.
if (pages === 'latest') {
  const n = Number(pageSize);
  out.latest1m = await ex.fetchOHLCV(market.symbol, '1m', undefined, n);
  out.latest1h = await ex.fetchOHLCV(market.symbol, '1h', undefined, n);
  out.since = await ex.fetchOHLCV(market.symbol, '1m', Number(since), 10);
  await ex.close();
  console.log(JSON.stringify(out));
  process.exit(0);
}

// Paging as a user does: each page starts after the last.
let from = Number(since);
out.ohlcv = [];
for (let i = 0; i < Number(pages); i++) {
  const page = await ex.fetchOHLCV(market.symbol, '1m', from, Number(pageSize));
  out.ohlcv.push(...page);
  if (page.length === 0) break;
  from = page[page.length - 1][0] + 60000;
}

// A candle is closed once the next one opens: keep watching until then.
// ccxt returns what changed; the newest value of each candle is kept.
let first;
const seen = new Map();
for (;;) {
  const candles = await ex.watchOHLCV(market.symbol, '1m');
  for (const c of candles) seen.set(c[0], c);
  const last = Math.max(...seen.keys());
  if (first === undefined) first = last;
  if (last > first && seen.has(last - 60000)) {
    out.closed = seen.get(last - 60000);
    break;
  }
}
out.closedREST = (await ex.fetchOHLCV(market.symbol, '1m', out.closed[0], 1))[0];
await ex.close();
console.log(JSON.stringify(out));
