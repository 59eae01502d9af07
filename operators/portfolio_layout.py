"""The layout of the compiled portfolio step's arrays and the codes in its
event log: plain integers, shared by the kernel (`operators.portfolio_kernel`,
which compiles them in) and the Python side that builds the arrays and
decodes the events (`operators.compiled_portfolio`, `operators.portfolio_events`,
`operators.config_book`, `operators.day_ledger`). Numba-free, so that side
imports it without loading numba (a backtest that runs the ahead-of-time
build of the step never does: `operators.portfolio_step`).

Changing this file: numba's cache of the kernel checks only the kernel
file's own time stamp, so `portfolio_kernel.LAYOUT_DIGEST` must change with
it (the kernel refuses to load otherwise, naming the new digest).
"""

# -- configuration rules: cfg_f[c, .], cfg_i[c, .]
CF_BUY_SLIP, CF_SELL_SLIP, CF_COMMISSION, CF_RISK_PCT, CF_MAX_POS_PCT, CF_DD_FLOOR, \
    CF_TRAIL_ACT, CF_TRAIL_PCT = range(8)
N_CF = 8
CI_TRAILING, CI_MAX_POSITIONS, CI_MAX_PER_SYMBOL, CI_MAX_LOSSES = range(4)
N_CI = 4
# per strategy: st_f[c, g, .], st_i[c, g, .]
SF_TP, SF_SL, SF_TS_MOVE = range(3)
N_SF = 3
SI_RANK, SI_TS_SECONDS = range(2)
N_SI = 2
# -- account: acct_f[c, .], acct_i[c, .]
AF_CASH, AF_PENDING_CASH, AF_SOD_EQUITY = range(3)
N_AF = 3
AI_PENDING_ENTRIES, AI_LOSS_STREAK, AI_DAY_HALT, AI_HALT, AI_NPOS, AI_NPEND, AI_GROUP_SEQ = range(7)
N_AI = 7
# -- positions: pos_f[c, k, .], pos_i[c, k, .]
PF_ENTRY_FILL, PF_ENTRY_COMMISSION, PF_STOP, PF_TARGET, PF_HWM = range(5)
N_PF = 5
PI_SYM, PI_STRAT, PI_QTY, PI_ENTRY_TIME, PI_TRAILED, PI_EXIT_QUEUED = range(6)
N_PI = 6
# -- waiting orders: pend_f[c, k, .], pend_i[c, k, .]
QF_PRICE = 0
N_QF = 1
QI_SYM, QI_STRAT, QI_BUY, QI_QTY, QI_TS, QI_LEG, QI_REASON = range(7)
N_QI = 7
# -- per symbol: sym_i[c, s, .]
SY_NPOS, SY_NPEND, SY_NPEND_BUY, SY_GROUP = range(4)
N_SY = 4
# -- clock
CK_HAS_MINUTE, CK_MINUTE, CK_HAS_DAY, CK_DAY, CK_BARS = range(5)
N_CK = 5

# -- events: ev_i[n, .], ev_f[n, .]
EI_KIND, EI_CFG, EI_SYM, EI_STRAT, EI_QTY, EI_TS, EI_TS2, EI_LEG, EI_REASON = range(9)
N_EI = 9
EF_X, EF_Y, EF_Z, EF_W, EF_V = range(5)
N_EF = 5
# kinds. ORDER: ts decided, leg, reason (intent), x decision price. FILL: ts,
# ts2 the order's decision time, leg, reason, x price, y commission. TRADE:
# ts exit, ts2 entry, reason, x entry price, y exit price, z pnl, w return,
# v commission. REJECT: ts, reason, x price. EQUITY: ts, qty open positions,
# x cash, y equity, z exposure.
EV_ORDER, EV_FILL, EV_TRADE, EV_REJECT, EV_EQUITY = 1, 2, 3, 4, 5
# legs (the order id's last part)
LEG_ENTRY, LEG_EXIT, LEG_FLATTEN, LEG_STOP, LEG_TARGET = range(5)
# reasons: order intents and exit reasons
R_ENTRY, R_STOP_LOSS, R_TRAILING_STOP, R_TAKE_PROFIT, R_TIME_STOP, R_SIGNAL, R_KILL_SWITCH = range(7)
# rejection reasons (and halts: AI_DAY_HALT holds DAY_*, AI_HALT HALT_*)
J_HALTED, J_LOSS_STREAK, J_DRAWDOWN, J_MAX_POSITIONS, J_MAX_PER_SYMBOL, J_SIZE_ZERO = range(6)
DAY_NONE, DAY_LOSS_STREAK, DAY_DRAWDOWN = 0, 1, 2
HALT_NONE, HALT_KILL_SWITCH = 0, 1
SIDE_BUY, SIDE_SELL = 0, 1

# apply_bars stops early and says why
DONE, NEED_EVENTS, NEED_SLOTS = 0, 1, 2

# -- a sweep's day ledgers: st_i[c, .], st_f[c, .]
(L_DAY, L_MINUTES, L_IN_MARKET, L_EXP_N) = range(4)  # int64
(L_CASH, L_PREV, L_PEAK, L_EQUITY, L_WORST, L_EXP_SUM) = range(6)  # float64
N_LI, N_LF = 4, 6
NO_DAY = -1
