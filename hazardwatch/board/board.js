"use strict";
// The duty-room board. It never shows stale data as live: the stream sends a heartbeat every few
// seconds; without one for STALE_MS (or while the server says its own feed is down) the whole board
// is marked stale, and on reconnect it reloads every open alarm before applying new events.
const STALE_MS = 5000, TONE_EVERY_MS = 8000, MUTE_MS = 15 * 60 * 1000;
const SEV = {red: ["红色", "重大", 4, "▲"], orange: ["橙色", "较大", 3, "◆"], yellow: ["黄色", "一般", 2, "●"], blue: ["蓝色", "低", 1, "■"]};
const STATE = {active_unacked: "未确认", active_acked: "已确认", cleared_unacked: "已恢复·未确认", closed: "已关闭"};
const LEVELS = [["enterprise", "企", "企业"], ["town", "镇", "镇/街道"], ["district", "区", "区"]];
const $ = id => document.getElementById(id);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = iso => iso ? new Date(iso).toLocaleString("zh-CN", {timeZone: "Asia/Shanghai", hour12: false}) : "";
const hms = d => d.toLocaleTimeString("zh-CN", {timeZone: "Asia/Shanghai", hour12: false});
const qs = new URLSearchParams(location.search);

let token = localStorage.getItem("hw-token") || "";
let me = null, alarms = new Map(), es = null, audioCtx = null;
let lastGood = 0, lastGoodAt = null, streamLive = false, loading = false, pending = [];
let mutedUntil = Number(localStorage.getItem("hw-muted-until") || 0), lastTone = 0;
let view = "list", current = null;
window.hwBoard = {get stale() { return document.body.classList.contains("stale"); }, get ringing() { return ringing(); }, get mutedUntil() { return mutedUntil; }};

async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json", ...(opts.headers || {})}});
  if (r.status === 401) { logout("令牌无效或已撤销，请重新登录"); throw new Error("401"); }
  if (!r.ok) {
    let t = await r.text();
    try { t = JSON.parse(t).detail; } catch (e) { /* plain text */ }
    if (opts.method) alert("操作失败：" + (typeof t === "string" ? t : JSON.stringify(t)));
    throw new Error(String(r.status));
  }
  return r.json();
}

// --- staleness -------------------------------------------------------------------------------
function good() { lastGood = Date.now(); lastGoodAt = new Date(); setStale(false); }
function setStale(on) {
  const was = document.body.classList.contains("stale");
  document.body.classList.toggle("stale", on);
  $("stale").hidden = !on;
  if (on) {
    $("stale-since").textContent = lastGoodAt ? hms(lastGoodAt) : "—";
    $("status").textContent = "连接中断 · 正在重连…";
  } else {
    $("status").textContent = "实时 · " + hms(new Date());
  }
  if (on !== was) renderCounts();
}
setInterval(() => {
  if (!me) return;
  if (Date.now() - lastGood > STALE_MS) setStale(true);
  tone();
}, 500);

// --- data ------------------------------------------------------------------------------------
async function reload() {
  // full open-alarm list; events arriving meanwhile are applied after it
  loading = true; pending = [];
  try {
    const list = await api("/api/v1/alarms?state=active&limit=1000");
    alarms.clear();
    for (const a of list) upsert(a, false);
    for (const a of pending) upsert(a, true);
  } finally { loading = false; pending = []; }
  render();
}
function upsert(a, fresh) {
  if (loading && fresh) { pending.push(a); return; }
  const old = alarms.get(a.id);
  a._new = fresh && (!old || old.severity !== a.severity);
  if (a.state === "closed") alarms.delete(a.id); else alarms.set(a.id, a);
  if (current && current.id === a.id && !$("detail").hidden) openDetail(a.id, false);
}
function connect() {
  if (es) es.close();
  streamLive = false;
  es = new EventSource("/api/v1/stream?token=" + encodeURIComponent(token));
  es.addEventListener("hello", ev => { const d = JSON.parse(ev.data); if (d.live) good(); reload().catch(() => {}); });
  es.addEventListener("heartbeat", ev => { const d = JSON.parse(ev.data); streamLive = d.live; if (d.live) good(); });
  es.addEventListener("resync", () => { reload().catch(() => {}); });
  es.addEventListener("alarm", ev => { upsert(JSON.parse(ev.data), true); good(); render(); });
  es.addEventListener("closed", ev => { const d = JSON.parse(ev.data); es.close(); if (String(d.reason).includes("撤销")) logout("令牌已撤销"); else setTimeout(connect, 2000); });
  es.onerror = () => { setStale(true); };
}

// --- rendering -------------------------------------------------------------------------------
function visible(a) {
  const t = $("f-town").value, e = $("f-ent").value;
  return a.state !== "closed" && (!t || a.town === t) && (!e || a.enterprise === e);
}
function dur(sec) {
  const s = Math.round(Math.abs(sec));
  if (s < 60) return `${s} 秒`;
  if (s < 3600) return `${Math.round(s / 60)} 分钟`;
  const m = Math.round(s / 60);
  return `${Math.floor(m / 60)} 小时` + (m % 60 ? ` ${m % 60} 分钟` : "");
}
// the gateway clock as people read it: "网关时钟慢 10 分钟（超出允许 ±2 分钟）"
function clockText(e) {
  if (e.clock_offset_s === null || e.clock_offset_s === undefined) return "网关时钟：尚未测得";
  const off = e.clock_offset_s, which = off < 0 ? "慢" : "快";
  if (e.clock_wrong) return `网关时钟${which} ${dur(off)}（超出允许 ±${dur(e.clock_skew_max_s)}，请校准）`;
  return Math.abs(off) < 1 ? "网关时钟准确" : `网关时钟正常（${which} ${dur(off)}）`;
}
const ENT_STATE = {running: "正常生产", stopped: "停产", maintenance: "检维修"};
async function drawEnt() {
  const code = $("f-ent").value, box = $("ent-info");
  if (!code) { box.hidden = true; return; }
  const e = (await api("/api/v1/enterprises")).find(x => x.code === code);
  if (!e || $("f-ent").value !== code) return;
  box.innerHTML = `<b>${esc(e.name)}</b> · ${ENT_STATE[e.state] || esc(e.state)} · ${e.online === false ? "网关离线" : e.online ? "网关在线" : "网关状态未知"}${e.stale ? " · 数据中断" : ""} · <span id="ent-clock" class="${e.clock_wrong ? "warnx" : ""}">${esc(clockText(e))}</span> · 未关闭预警 ${e.open_alarms}`;
  box.hidden = false;
}
function badge(sev) { const s = SEV[sev]; return `<span class="badge b-${sev}">${s[3]} ${s[0]}·${s[1]}</span>`; }
function point(a) {
  if (a.members && a.members.length) return (a.hazard_source ? esc(a.hazard_source.name) + "：" : "") + a.members.map(m => esc(m.name)).join("、");
  if (a.sensor_name || a.tag) return `${esc(a.sensor_name || "")} <span class="muted">${esc(a.tag || "")}</span>`;
  return a.hazard_source ? esc(a.hazard_source.name) : "整厂";
}
function levelTold(a, l) {
  const order = ["enterprise", "town", "district"];
  return a.escalation_level && order.indexOf(l) <= order.indexOf(a.escalation_level);
}
function renderCounts() {
  const stale = document.body.classList.contains("stale");
  const counts = {red: 0, orange: 0, yellow: 0, blue: 0};
  for (const a of alarms.values()) if (a.state !== "closed") counts[a.severity]++;
  for (const k in counts) $("n-" + k).querySelector("b").textContent = stale ? "—" : counts[k];
}
function render() {
  renderCounts();
  const list = [...alarms.values()].filter(visible).sort((a, b) => (SEV[b.severity][2] - SEV[a.severity][2]) || (b.raised_at > a.raised_at ? 1 : -1));
  $("empty").hidden = list.length > 0;
  $("rows").innerHTML = list.map(a => {
    const lv = LEVELS.map(([l, z, n]) => `<span class="${levelTold(a, l) ? "on" : ""}" title="${n}">${z}</span>`).join("");
    const shelved = a.shelved_until && new Date(a.shelved_until) > new Date();
    return `<tr data-id="${a.id}" class="sev-${a.severity} ${a.state === "active_unacked" ? "unacked" : ""} ${a._new ? "new" : ""}">
      <td>${badge(a.severity)}</td><td class="val">${fmt(a.raised_at)}</td><td>${esc(a.enterprise_name || a.enterprise)}</td>
      <td>${point(a)}</td><td>${esc(a.text || a.message)}${a.backfilled ? ' <span class="tagx">补传数据</span>' : ""}${shelved ? ' <span class="tagx">已搁置</span>' : ""}${a.suppressed ? ' <span class="tagx">已抑制</span>' : ""}</td>
      <td class="val">${esc(a.value_text || "")}</td>
      <td>${STATE[a.state] || a.state}${a.acked_by ? "<br><small>" + esc(a.acked_by) + "</small>" : ""}</td>
      <td class="esc">${lv}</td>
      <td class="ops">${a.state === "active_unacked" || a.state === "cleared_unacked" ? `<button data-act="ack">确认</button>` : ""}
        <button data-act="resolve">处置</button> ${shelved ? `<button data-act="unshelve">取消搁置</button>` : `<button data-act="shelve">搁置</button>`}</td></tr>`;
  }).join("");
  for (const a of alarms.values()) a._new = false;
  if (view === "map") drawMap().catch(() => {});
}

// --- detail panel (also a URL: #alarm/ID) ----------------------------------------------------
function chart(points, limits, prec) {
  const W = 520, H = 150, P = 6;
  const vals = points.map(p => p.value).filter(v => v !== null);
  const lims = Object.values(limits || {});
  if (!vals.length) return `<p class="muted">最近一小时无读数。</p>`;
  let lo = Math.min(...vals, ...lims), hi = Math.max(...vals, ...lims);
  if (hi === lo) { hi += 1; lo -= 1; }
  const t0 = new Date(points[0].ts).getTime(), t1 = Math.max(t0 + 1, new Date(points[points.length - 1].ts).getTime());
  const x = t => P + (W - 2 * P) * (new Date(t).getTime() - t0) / (t1 - t0), y = v => H - P - (H - 2 * P) * (v - lo) / (hi - lo);
  const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.ts).toFixed(1)},${y(p.value).toFixed(1)}`).join("");
  const names = {hh: "高高", h: "高", l: "低", ll: "低低"};
  const limLines = Object.entries(limits || {}).map(([k, v]) => `<line x1="${P}" x2="${W - P}" y1="${y(v)}" y2="${y(v)}" stroke="${k.length === 2 ? "#ff5252" : "#ffb74d"}" stroke-dasharray="5 4"/><text x="${W - P - 2}" y="${y(v) - 3}" fill="#ccc" font-size="11" text-anchor="end">${names[k] || k} ${Number(v).toFixed(prec)}</text>`).join("");
  const last = points[points.length - 1];
  // readings that arrived late (a gateway's backfill, 断点续传) are drawn apart: hollow orange marks
  const late = points.filter(p => p.backfilled && p.value !== null).map(p => `<circle class="late" cx="${x(p.ts).toFixed(1)}" cy="${y(p.value).toFixed(1)}" r="3" fill="none" stroke="#ffb74d" stroke-width="1.5"/>`).join("");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${limLines}<path d="${line}" fill="none" stroke="#8fd3ff" stroke-width="2"/>${late}<circle cx="${x(last.ts)}" cy="${y(last.value)}" r="4" fill="#8fd3ff"/></svg>`;
}
// which part of the chart arrived late, in words: "补传数据：08:00:05—08:59:55 共 720 个读数，10:02:11 才到达"
function lateNote(spans) {
  if (!spans.length) return "";
  const n = spans.reduce((k, b) => k + b.n, 0);
  const items = spans.slice(-5).map(b => `<li>${hms(new Date(b.start))}—${hms(new Date(b.end))} 共 ${b.n} 个读数，${hms(new Date(b.received_at))} 才到达（迟到 ${dur((new Date(b.received_at) - new Date(b.end)) / 1000)}）</li>`).join("");
  return `<div class="late-note"><span class="tagx">补传数据</span> 图中空心橙点为网关断线后补传的读数（共 ${n} 个），不是实时到达的：<ul>${items}</ul></div>`;
}
async function openDetail(id, push = true) {
  const d = await api(`/api/v1/alarms/${id}`);
  current = d;
  if (push && location.hash !== `#alarm/${id}`) history.replaceState(null, "", location.pathname + location.search + `#alarm/${id}`);
  let trend = "";
  if (d.sensor) {
    // the last hour of data: up to the newest reading (a quiet or late sensor still shows its trend)
    const newest = d.sensor.latest ? new Date(d.sensor.latest.ts).getTime() + 1000 : Date.now();
    const end = new Date(Math.min(Date.now() + 60e3, newest)), start = new Date(end.getTime() - 3600e3);
    try {
      const r = await api(`/api/v1/sensors/${d.sensor.id}/readings?start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}`);
      trend = chart(r.points, r.sensor.limits, r.sensor.precision) + lateNote(r.backfills || []);
    } catch (e) { trend = `<p class="muted">读数暂不可用。</p>`; }
  }
  const hs = d.hazard_source ? `${esc(d.hazard_source.name)}${d.hazard_source.grade ? `（${["", "一", "二", "三", "四"][d.hazard_source.grade]}级重大危险源）` : ""}` : "—";
  const now = d.sensor && d.sensor.latest ? `<span class="big">${esc(d.sensor.latest.text)}</span> <span class="muted">${fmt(d.sensor.latest.ts)}</span>` : (d.value_text ? `<span class="big">${esc(d.value_text)}</span>` : "—");
  const who = d.responsible.map(u => `<li><b>${esc(u.level_zh)} · ${esc(u.unit_name)}</b>：${u.contacts.length ? u.contacts.map(c => `${esc(c.name)} ${c.phone ? `<a class="tel" href="tel:${esc(c.phone)}">☎ ${esc(c.phone)}</a>` : ""}`).join("；") : '<span class="muted">未登记联系人</span>'}</li>`).join("");
  const tl = d.timeline.map(t => t.kind === "unreachable"
    ? `<li class="fail unreachable"><span class="tagx bad">✖ 未能送达</span> ${esc(t.time || fmt(t.ts))} ${esc(t.text.replace(/^未能送达：/, ""))}</li>`
    : `<li class="${t.kind === "notification" ? (t.delivered ? "ok" : "fail") : ""}">${esc(t.time || fmt(t.ts))} ${esc(t.text)}</li>`).join("");
  const open = d.state !== "closed";
  $("detail").innerHTML = `<button class="close" id="d-close">关闭 ✕</button>
    <h2>${badge(d.severity)} ${esc(d.enterprise_name)}</h2>
    <p>${esc(d.text || d.message)}${d.backfilled ? ' <span class="tagx">由补传数据产生</span>' : ""}</p>
    <p class="muted">发生 ${fmt(d.raised_at)}${d.noticed_at ? ` · 系统发现 ${fmt(d.noticed_at)}` : ""} · ${STATE[d.state] || d.state}${d.acked_by ? ` · 确认人 ${esc(d.acked_by)}` : ""}</p>
    <h3>当前读数</h3><p>${now}${d.limit_text ? ` · 限值 ${esc(d.limit_text)}` : ""}</p>
    ${d.sensor ? `<h3>最近一小时 · ${esc(d.sensor.name)}（${esc(d.sensor.tag)}）</h3>${trend}` : ""}
    <h3>危险源</h3><p>${hs}</p>
    <h3>责任人（点击号码直接拨打）</h3><ul>${who}</ul>
    <h3>通知与处置记录</h3><ul class="timeline">${tl || '<li class="muted">暂无</li>'}</ul>
    ${open ? `<p class="ops">${d.state === "active_unacked" || d.state === "cleared_unacked" ? '<button data-dact="ack">确认</button> ' : ""}<button data-dact="resolve">处置</button> <button data-dact="shelve">搁置</button></p>` : ""}`;
  $("detail").hidden = false;
  $("d-close").onclick = closeDetail;
}
function closeDetail() { $("detail").hidden = true; current = null; history.replaceState(null, "", location.pathname + location.search); }
$("detail").addEventListener("click", ev => { const b = ev.target.closest("button[data-dact]"); if (b) act(b.dataset.dact, current); });

// --- commands --------------------------------------------------------------------------------
function act(what, a) {
  current = a;
  const desc = `${esc(a.enterprise_name)} · ${esc(a.text || a.message)}`;
  if (what === "ack") { $("ack-what").innerHTML = desc; $("dlg-ack").showModal(); }
  if (what === "resolve") { $("res-what").innerHTML = desc; $("dlg-resolve").showModal(); }
  if (what === "shelve") { $("sh-what").innerHTML = desc; $("dlg-shelve").showModal(); }
  if (what === "unshelve") api(`/api/v1/alarms/${a.id}/unshelve`, {method: "POST", body: JSON.stringify({by: localStorage.getItem("hw-by") || "值班员"})}).then(x => { upsert(x, false); render(); });
}
$("rows").addEventListener("click", ev => {
  const tr = ev.target.closest("tr"); if (!tr) return;
  const a = alarms.get(Number(tr.dataset.id)); if (!a) return;
  const b = ev.target.closest("button");
  if (b) act(b.dataset.act, a); else openDetail(a.id).catch(() => {});
});
async function after(p) { const a = await p; upsert(a, false); render(); if (!$("detail").hidden) openDetail(a.id, false); }
$("dlg-ack").addEventListener("close", () => {
  if ($("dlg-ack").returnValue !== "ok") return;
  localStorage.setItem("hw-by", $("ack-by").value);
  after(api(`/api/v1/alarms/${current.id}/ack`, {method: "POST", body: JSON.stringify({by: $("ack-by").value, note: $("ack-note").value || null})}));
});
$("dlg-resolve").addEventListener("close", () => {
  if ($("dlg-resolve").returnValue !== "ok") return;
  after(api(`/api/v1/alarms/${current.id}/resolve`, {method: "POST", body: JSON.stringify({by: $("res-by").value, cause: $("res-cause").value, action: $("res-action").value})}));
});
$("dlg-shelve").addEventListener("close", () => {
  if ($("dlg-shelve").returnValue !== "ok") return;
  const until = new Date(Date.now() + Number($("sh-hours").value) * 3600e3).toISOString();
  after(api(`/api/v1/alarms/${current.id}/shelve`, {method: "POST", body: JSON.stringify({by: $("sh-by").value, reason: $("sh-reason").value, until})}));
});
for (const id of ["ack-by", "res-by", "sh-by"]) $(id).value = localStorage.getItem("hw-by") || "";

// --- sound: a red alarm repeats its tone until acknowledged, or muted for a bounded time -------
function ringing() { return [...alarms.values()].some(a => a.severity === "red" && a.state === "active_unacked"); }
function tone() {
  const muted = Date.now() < mutedUntil;
  const ring = ringing() && !document.body.classList.contains("stale");
  const st = $("sound-state");
  st.hidden = !(ring || muted);
  st.className = "sound " + (muted ? "muted" : ring ? "ringing" : "");
  st.textContent = muted ? `🔇 已静音至 ${hms(new Date(mutedUntil))}` : ring ? "🔔 红色预警未确认 · 报警音响中" : "";
  $("b-mute").textContent = muted ? "取消静音" : "静音15分钟";
  if (!ring || muted || Date.now() - lastTone < TONE_EVERY_MS) return;
  lastTone = Date.now();
  try {
    audioCtx = audioCtx || new AudioContext();
    for (let i = 0; i < 3; i++) {
      const o = audioCtx.createOscillator(), g = audioCtx.createGain();
      o.frequency.value = 880; o.connect(g); g.connect(audioCtx.destination);
      const t = audioCtx.currentTime + i * 0.35; g.gain.setValueAtTime(0.25, t); g.gain.setValueAtTime(0, t + 0.2);
      o.start(t); o.stop(t + 0.25);
    }
  } catch (e) { /* no audio device: the indicator still shows it */ }
}
$("b-mute").onclick = () => {
  mutedUntil = Date.now() < mutedUntil ? 0 : Date.now() + MUTE_MS;
  localStorage.setItem("hw-muted-until", String(mutedUntil));
  tone();
};

// --- the park at a glance (一张图) -------------------------------------------------------------
async function drawMap() {
  const m = await api("/api/v1/map");
  const svg = $("map");
  svg.setAttribute("viewBox", `0 0 ${m.width} ${m.height}`);
  const towns = m.towns.map(t => `<g class="town"><rect x="${t.x + 4}" y="${t.y + 4}" width="${t.w - 8}" height="${t.h - 8}" rx="8"/><text x="${t.x + 14}" y="${t.y + 24}">${esc(t.name)}</text></g>`).join("");
  const ents = m.enterprises.map(e => {
    const cls = `ent w-${e.worst || "none"} ${e.stale ? "stale" : ""}`;
    const mark = e.worst ? SEV[e.worst][3] : "";
    const tip = `${e.name}${e.worst ? " · 最高 " + SEV[e.worst][0] + "预警" : " · 正常"}${e.open_alarms ? ` · 未关闭 ${e.open_alarms} 条` : ""}${e.stale ? " · 数据中断" : ""}\n${clockText(e)}`;
    return `<g class="${cls}${e.clock_wrong ? " clock-wrong" : ""}" data-ent="${esc(e.code)}" data-worst="${e.worst || ""}" data-stale="${e.stale}"><title>${esc(tip)}</title><circle cx="${e.x}" cy="${e.y}" r="18"/><text x="${e.x}" y="${e.y + 5}">${mark}</text><text x="${e.x}" y="${e.y + 36}">${esc(e.name)}${e.open_alarms ? `（${e.open_alarms}）` : ""}${e.stale ? " · 数据中断" : ""}${e.clock_wrong ? " · 时钟偏差" : ""}</text></g>`;
  }).join("");
  svg.innerHTML = towns + ents;
}
$("map").addEventListener("click", ev => {
  const g = ev.target.closest("g.ent"); if (!g) return;
  $("f-ent").value = g.dataset.ent; show("list"); drawEnt().catch(() => {});
});

// --- 交接班 -------------------------------------------------------------------------------------
async function drawHandover() {
  const s = await api("/api/v1/handover");
  const r = s.raised;
  const rows = list => list.map(a => `<tr><td>${badge(a.severity)}</td><td>${fmt(a.raised_at)}</td><td>${esc(a.enterprise_name)}</td><td>${esc(a.text || a.message)}</td><td>${STATE[a.state] || a.state}</td><td>${esc(a.acked_by || "")}</td></tr>`).join("");
  const head = "<tr><th>等级</th><th>发生时间</th><th>企业</th><th>内容</th><th>状态</th><th>确认人</th></tr>";
  $("v-handover").innerHTML = `<h2>交接班 · ${esc(me.site)} · ${esc(me.unit_name)}</h2>
    <p>本班次：${fmt(s.since)} — ${fmt(s.until)}</p>
    <p>本班新增预警：红 ${r.red || 0} · 橙 ${r.orange || 0} · 黄 ${r.yellow || 0} · 蓝 ${r.blue || 0}；本班已处置 ${s.resolved} 条；仍未关闭 ${s.open.length} 条。</p>
    <h3>仍未关闭的预警</h3><table>${head}${rows(s.open) || '<tr><td colspan="6">无</td></tr>'}</table>
    <h3>本班已处置</h3><table>${head}${rows(s.resolved_alarms) || '<tr><td colspan="6">无</td></tr>'}</table>
    <h3>交接记录</h3><ul>${s.handovers.map(h => `<li>${fmt(h.ts)}：${esc(h.handed_over_by)} → ${esc(h.taken_over_by)}${h.note ? "：" + esc(h.note) : ""}</li>`).join("") || "<li>本班尚无交接记录</li>"}</ul>
    <form id="ho-form" class="no-print"><label>交班人 <input id="ho-from" required maxlength="50"></label><label>接班人 <input id="ho-to" required maxlength="50"></label><br>
      <label>交接事项 <textarea id="ho-note" rows="2" cols="60" maxlength="2000"></textarea></label><br>
      <button type="submit">记录交接</button> <button type="button" id="ho-print">打印交接班记录</button></form>
    <p>交班人签字：__________　　接班人签字：__________</p>`;
  $("ho-form").onsubmit = async ev => {
    ev.preventDefault();
    await api("/api/v1/handover", {method: "POST", body: JSON.stringify({handed_over_by: $("ho-from").value, taken_over_by: $("ho-to").value, note: $("ho-note").value || null})});
    drawHandover();
  };
  $("ho-print").onclick = () => window.print();
}

// --- views, login ------------------------------------------------------------------------------
function show(v) {
  view = v;
  for (const b of document.querySelectorAll("#views button")) b.classList.toggle("on", b.dataset.view === v);
  for (const n of ["list", "map", "handover"]) $("v-" + n).hidden = n !== v;
  if (v === "map") drawMap().catch(() => {});
  if (v === "handover") drawHandover().catch(() => {});
  render();
}
document.querySelectorAll("#views button").forEach(b => { b.onclick = () => show(b.dataset.view); });
$("f-town").onchange = render;
$("f-ent").onchange = () => { render(); drawEnt().catch(() => {}); };
$("b-wall").onclick = () => document.body.classList.toggle("wall");
$("b-logout").onclick = () => logout();
function logout(msg) {
  localStorage.removeItem("hw-token"); token = ""; me = null;
  if (es) es.close();
  alarms.clear();
  for (const id of ["main", "counts", "views", "filters", "tools", "sound-state", "stale"]) $(id).hidden = true;
  document.body.classList.remove("stale");
  $("login").hidden = false; $("login-err").textContent = msg || ""; $("status").textContent = "未登录";
}
async function start() {
  me = await api("/api/v1/whoami");
  $("title").textContent = `${me.site} · 预警值班台（${me.unit_name}）`;
  document.title = `${me.site} · 预警值班台`;
  const towns = Object.entries(me.units).filter(([, u]) => u.level === "town");
  const ents = Object.entries(me.units).filter(([, u]) => u.level === "enterprise");
  $("f-town").innerHTML = '<option value="">全部</option>' + towns.map(([c, u]) => `<option value="${esc(c)}">${esc(u.name)}</option>`).join("");
  $("f-ent").innerHTML = '<option value="">全部</option>' + ents.map(([c, u]) => `<option value="${esc(c)}">${esc(u.name)}</option>`).join("");
  for (const id of ["main", "counts", "views", "filters", "tools"]) $(id).hidden = false;
  $("login").hidden = true;
  setStale(true);  // nothing is live until the stream says so
  connect();
  const m = location.hash.match(/^#alarm\/(\d+)$/);
  if (m) openDetail(Number(m[1]), false).catch(() => {});
  const rotate = Number(qs.get("rotate") || 0);
  if (rotate > 0) setInterval(() => show(view === "list" ? "map" : "list"), rotate * 1000);
}
$("b-login").onclick = () => { token = $("token").value.trim(); localStorage.setItem("hw-token", token); start().catch(() => {}); };
if (qs.get("wall")) document.body.classList.add("wall");
if (qs.get("token")) {
  token = qs.get("token"); localStorage.setItem("hw-token", token);
  qs.delete("token");
  history.replaceState(null, "", location.pathname + (qs.toString() ? "?" + qs : "") + location.hash);
}
if (token) start().catch(() => {}); else logout();
