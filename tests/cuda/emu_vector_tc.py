"""CPU emulation of turbo_sdpa_vector_tc's data layout (no GPU needed).

Mirrors, in Python, what the kernel in
mlx_overlay/mlx/backend/cuda/device/turboquant_decode_tc.cuh (with turboquant_tc_ops.cuh) does per lane: the keys
of each lane (NT consecutive keys per lane for S^T, 2 NT for V^T P^T), the raw
code loads (TcCodes), the turbo3 plane-pair key indices (kwords / tc_kdim), the
key-pair value indices (turbo4 x / y words, turbo3 vpair straight from the planes),
the byte -> (c[first], c[second]) tables of 256 entries (tc_kentry / tc_ventry,
turbo3 indices with two bits left as they fall), the m16n8k16 fragment layouts of S^T = K Q^T
and O^T = V^T P^T (A: a0 row g cols 2t.., a1 row g+8, a2 row g cols 2t+8..,
a3 row g+8; B: b0 rows 2t.., b1 rows 2t+8.., col g; C: rows g, g+8, cols 2t,
2t+1), the transpose of P by movmatrix, the online softmax per column with
the fp16 range guards, and the mapping of the accumulators back to dims, for
the block's 4 warps (each its own iterations and softmax state) and their
merge as the kernel's epilogue does it (s_m / s_l, the padded s_o rows, one
thread per row chunk); compares with float64 attention. It checks the index reasoning, not the CUDA
code itself (the device tests in test_tq_cuda.py do that).

    python3 tests/cuda/emu_vector_tc.py
"""
import random

import numpy as np

M=0xFFFFFFFF
def unpack(words,bits,D):
    if bits==4: return [(words[i//8]>>(4*(i%8)))&15 for i in range(D)]
    return [((words[i//16]>>(2*(i%16)))&3)|(((words[D//16+i//32]>>(i%32))&1)<<2) for i in range(D)]
def pack(codes,bits,D):
    if bits==4:
        w=[0]*(D//8)
        for i,c in enumerate(codes): w[i//8]|=c<<(4*(i%8))
        return w
    w=[0]*(D//16+(D+31)//32)
    for i,c in enumerate(codes):
        w[i//16]|=(c&3)<<(2*(i%16)); w[D//16+i//32]|=(c>>2)<<(i%32)
    return w
def prmt(a,b,sel):
    # __byte_perm(a, b, sel) without the sign mode (selector nibbles < 8)
    by=[(a>>(8*i))&255 for i in range(4)]+[(b>>(8*i))&255 for i in range(4)]
    return sum(by[(sel>>(4*n))&7]<<(8*n) for n in range(4))
class Codes:
    def __init__(s,bits,D,CPT): s.b,s.D,s.CPT=bits,D,CPT; s.NW=CPT//8; s.NLO=CPT//16 if CPT>=16 else 1; s.NHI=CPT//32 if CPT>=32 else 1
    def load(s,vec,c):
        b,D,CPT=s.b,s.D,s.CPT
        if b==4: s.raw=[vec[s.NW*c+i] for i in range(s.NW)]; return
        raw=[]
        if CPT>=16: raw+= [vec[s.NLO*c+i] for i in range(s.NLO)]
        else: raw.append(vec[c>>1])
        if CPT>=32: raw+= [vec[D//16+s.NHI*c+i] for i in range(s.NHI)]
        else: raw.append(vec[D//16+c//(32//CPT)])
        s.raw=raw
    def kwords(s,c):
        if s.b==4: return list(s.raw)
        CPT,NLO=s.CPT,s.NLO; kw=[0]*s.NW
        for i in range(CPT//16):
            L=s.raw[i]; h=(i&1) if CPT>=32 else (c&1)
            x=prmt(s.raw[NLO+((i>>1) if CPT>=32 else 0)],0,0x4140+0x202*h)
            y=((x<<4)&0x00FF00FF)|((x<<8)&0xFF00FF00)
            kw[2*i]=((L&0x0F0F0F0F)|(y&0xF0F0F0F0))&M
            kw[2*i+1]=(((L>>4)&0x0F0F0F0F)|((y>>2)&0xF0F0F0F0))&M
        return kw
    def vpair(s,o,c):
        # r[bb][q] byte m: index of coordinate 16 bb + 4 m + q of keys (s, o)
        CPT,NLO=s.CPT,s.NLO; r=[]
        for bb in range(max(1,CPT//16)):
            if CPT>=16:
                la,lb=s.raw[bb],o.raw[bb]; h=(bb&1) if CPT>=32 else (c&1); sel=0x5140+0x2222*h
            else:
                la,lb=s.raw[0]>>(16*(c&1)),o.raw[0]>>(16*(c&1)); sel=0x40+0x11*(c&3)
            hw=NLO+((bb>>1) if CPT>=32 else 0)
            y=prmt(s.raw[hw],o.raw[hw],sel)
            z=(y&0xF00FF00F)|((y<<4)&0x0F000F00)|((y>>4)&0x00F000F0)
            row=[]
            for q in range(4):
                a=la>>(2*q); b=(lb<<(4-2*q)) if q<2 else (lb>>(2*q-4))
                t=(a&0x0F0F0F0F)|(b&0xF0F0F0F0)
                row.append(((t&0x77777777)|((z<<(3-q))&0x88888888))&M)
            r.append(row)
        return r
def kdim(bits,p): return 2*p if bits==4 else 16*(p>>3)+4*(p&3)+2*((p>>2)&1)
def kentry(bits,e):  # codes (first, second)
    if bits==4: return (e&15, e>>4)
    return ((e&3)|((e>>2)&4), ((e>>2)&3)|((e>>3)&4))
def ventry(bits,e):
    if bits==4: return (e&15, e>>4)
    return ((e&3)|((e>>1)&4), ((e>>4)&3)|((e>>5)&4))
def byte(w,k): return (w>>(8*k))&255
def vwords(ca,cb,g):
    # {(m-tile i, 0 for dim 2i (x) / 1 for 2i+1 (y)): (word, byte)} of keys (ca, cb)
    VC=ca.CPT; out={}
    if ca.b==4:
        for w in range(VC//8):
            wa,wb=ca.raw[w],cb.raw[w]
            x=(wa&0x0F0F0F0F)|((wb<<4)&0xF0F0F0F0); y=((wa>>4)&0x0F0F0F0F)|(wb&0xF0F0F0F0)
            for mm in range(4): out[(4*w+mm,0)]=(x,mm); out[(4*w+mm,1)]=(y,mm)
    else:
        r=ca.vpair(cb,g)
        for bb in range(len(r)):
            for m in range(4 if VC>=16 else 2):
                for e in range(2):
                    out[(8*bb+2*m+e,0)]=(r[bb][2*e],m); out[(8*bb+2*m+e,1)]=(r[bb][2*e+1],m)
    return out
def vindices(ca,cb,g):
    # (chunk dim, table index) of every value coordinate of the lane
    return [(2*i+xy,byte(w,k)) for (i,xy),(w,k) in vwords(ca,cb,g).items()]

def check_bits():
    bad=0
    for D in (64,128,256):
      for bits in (3,4):
        for trial in range(50):
            codes=[random.randrange(1<<bits) for _ in range(D)]
            vec=pack(codes,bits,D); assert unpack(vec,bits,D)==codes
            # K side: lane t chunk D/4
            CPT=D//4
            for t in range(4):
                c=Codes(bits,D,CPT); c.load(vec,t); kw=c.kwords(t)
                for st in range(D//16):
                    for r in range(2):
                        p=2*st+r; w=kw[st>>1]; e=byte(w,2*(st&1)+r)
                        a,b=kentry(bits,e); d=CPT*t+kdim(bits,p)
                        if (a,b)!=(codes[d],codes[d+1]): bad+=1
            # V side: lane g chunk D/8; keys a,b
            codes2=[random.randrange(1<<bits) for _ in range(D)]; vec2=pack(codes2,bits,D)
            VC=D//8
            for g in range(8):
                ca=Codes(bits,D,VC); ca.load(vec,g); cb=Codes(bits,D,VC); cb.load(vec2,g)
                for (d,e) in vindices(ca,cb,g):
                    if ventry(bits,e)!=(codes[VC*g+d],codes2[VC*g+d]): bad+=1
    return bad

C3=[-2.1520,-1.3440,-0.7560,-0.2451,0.2451,0.7560,1.3440,2.1520]
C4=[-2.7326,-2.0690,-1.6180,-1.2562,-0.9424,-0.6568,-0.3881,-0.1284,0.1284,0.3881,0.6568,0.9424,1.2562,1.6180,2.0690,2.7326]
def cb(bits): return C3 if bits==3 else C4
f16=np.float16
def table(bits,key):
    c=cb(bits); out=[]
    for e in range(256):
        a,b=kentry(bits,e) if key else ventry(bits,e)
        out.append((f16(c[a]),f16(c[b])))
    return out
def mma(a,b,cacc):
    # one m16n8k16: a[lane]=(a0,a1,a2,a3) pairs, b[lane]=(b0,b1) pairs,
    # cacc[lane]=[c0,c1,c2,c3] -> new accumulators
    A=np.zeros((16,16),np.float32); B=np.zeros((16,8),np.float32)
    for lane in range(32):
        g,t=lane>>2,lane&3
        A[g,2*t:2*t+2]=a[lane][0]; A[g+8,2*t:2*t+2]=a[lane][1]
        A[g,2*t+8:2*t+10]=a[lane][2]; A[g+8,2*t+8:2*t+10]=a[lane][3]
        B[2*t:2*t+2,g]=b[lane][0]; B[2*t+8:2*t+10,g]=b[lane][1]
    Dm=A.astype(np.float64)@B.astype(np.float64)
    out=[]
    for l in range(32):
        g,t=l>>2,l&3
        d=[Dm[g,2*t],Dm[g,2*t+1],Dm[g+8,2*t],Dm[g+8,2*t+1]]
        out.append([cacc[l][x]+np.float32(d[x]) for x in range(4)])
    return out
def trans(x):
    # movmatrix.trans: x[lane]=(row lane/4, cols 2(lane%4)..) of an 8x8 matrix
    M=[[None]*8 for _ in range(8)]
    for l in range(32): M[l>>2][2*(l&3)]=x[l][0]; M[l>>2][2*(l&3)+1]=x[l][1]
    return [(M[2*(l&3)][l>>2],M[2*(l&3)+1][l>>2]) for l in range(32)]
def run(D,KB,VB,nrows,kL,seed):
    rng=np.random.default_rng(seed)
    q=rng.standard_normal((nrows,D)).astype(np.float32)
    kcodes=rng.integers(0,1<<KB,(kL,D)); vcodes=rng.integers(0,1<<VB,(kL,D))
    ks=(rng.random(kL)*0.5+0.05).astype(f16).astype(np.float32); vs=(rng.random(kL)*0.5+0.05).astype(f16).astype(np.float32)
    kvec=[pack(list(map(int,kcodes[j])),KB,D) for j in range(kL)]; vvec=[pack(list(map(int,vcodes[j])),VB,D) for j in range(kL)]
    scale_log2=4/np.sqrt(D)*1.4426950408889634
    KT=32 if D<=128 else 16; NT=KT//8; MT=KT//16; KS=D//16; DM=D//16; KC=D//4; VC=D//8
    kt_=table(KB,True); vt_=table(VB,False)
    # Q^T B fragments of row g (guard: rows scaled to 2^13..); lane keeps the
    # factors of rows 2t, 2t+1 (its S^T columns)
    qb=[]; eqs=[]
    for lane in range(32):
        g,t=lane>>2,lane&3
        qf=(q[g,KC*t:KC*t+KC]*np.float32(scale_log2)) if g<nrows else np.zeros(KC,np.float32)
        rowmax=np.abs(q[g]*np.float32(scale_log2)).max() if g<nrows else 0
        eq=13-int(np.floor(np.log2(rowmax))) if rowmax>0 else 0
        qs=np.float32(2.0**eq); eqs.append(eq)
        l=[]
        for s in range(KS):
            d0=kdim(KB,2*s); d1=kdim(KB,2*s+1)
            l.append(((f16(qf[d0]*qs),f16(qf[d0+1]*qs)),(f16(qf[d1]*qs),f16(qf[d1+1]*qs))))
        qb.append(l)
    qun=[[np.float32(2.0**-eqs[8*(l&3)+4*r]) for r in range(2)] for l in range(32)]
    # each of the block's W warps runs its own iterations and softmax state
    W=4; states=[]
    for w in range(W):
        o=[[[np.float32(0)]*4 for _ in range(DM)] for _ in range(32)]
        m=[[-np.inf]*2 for _ in range(32)]; lsum=[[np.float32(0)]*2 for _ in range(32)]; ev=0
        for jb in range(w*KT,kL,W*KT):  # warp w's iterations (kStep = W KT)
            kw={}
            for lane in range(32):
                g,t=lane>>2,lane&3
                for j in range(NT):
                    jk=jb+NT*g+j; jk=jk if jk<kL else 0
                    c=Codes(KB,D,KC); c.load(kvec[jk],t); kw[(lane,j)]=c.kwords(t)
            # S^T = K Q^T: m-tile mt rows g (+8) = keys jb+NT*g+2mt (+1)
            s=[[[np.float32(0)]*4 for _ in range(MT)] for _ in range(32)]
            for st in range(KS):
                for mt in range(MT):
                    a=[]
                    for l in range(32):
                        w0=kw[(l,2*mt)][st>>1]; w1=kw[(l,2*mt+1)][st>>1]; k=2*(st&1)
                        a.append((kt_[byte(w0,k)],kt_[byte(w1,k)],kt_[byte(w0,k+1)],kt_[byte(w1,k+1)]))
                    res=mma(a,[qb[l][st] for l in range(32)],[s[l][mt] for l in range(32)])
                    for l in range(32): s[l][mt]=res[l]
            kidx=lambda l,mt,x: jb+NT*(l>>2)+2*mt+(x>>1)
            for l in range(32):
                for mt in range(MT):
                    for x in range(4):
                        jj=kidx(l,mt,x)
                        s[l][mt][x]=np.float32(s[l][mt][x]*qun[l][x&1]*ks[jj]) if jj<kL else -np.inf
            # column max over the 8 lanes of the same t
            mref=[[0,0] for _ in range(32)]
            for l in range(32):
                t=l&3
                for r in range(2):
                    mx=max([m[l][r]]+[s[l2][mt][x] for l2 in range(t,32,4) for mt in range(MT) for x in (r,2+r)])
                    mref[l][r]=0 if mx==-np.inf else mx
                    if mx!=m[l][r]:
                        al=np.float32(2.0**(m[l][r]-mref[l][r])); lsum[l][r]*=al
                        for i in range(DM): o[l][i][r]*=al; o[l][i][2+r]*=al
                        m[l][r]=mx
            vmax=max(vs[jb+j] for j in range(KT) if jb+j<kL)
            e=int(np.floor(np.log2(vmax)))
            if e>ev+4 or e<ev-8:
                fct=np.float32(2.0**(ev-e))
                for l in range(32):
                    for i in range(DM): o[l][i]=[v*fct for v in o[l][i]]
                ev=e
            vf=np.float32(2.0**-ev)
            pb=[[None]*MT for _ in range(32)]
            for mt in range(MT):
                halves=[]
                for h in range(2):
                    x=[]
                    for l in range(32):
                        jj=jb+NT*(l>>2)+2*mt+h; vsc=vs[jj] if jj<kL else vs[0]
                        pp=[]
                        for r in range(2):
                            p=np.float32(2.0**(s[l][mt][2*h+r]-mref[l][r])); lsum[l][r]+=p; pp.append(f16(p*vsc*vf))
                        x.append(tuple(pp))
                    halves.append(trans(x))
                for l in range(32): pb[l][mt]=(halves[0][l],halves[1][l])
            # O^T += V^T P^T
            for mt in range(MT):
                ab={}; cd={}
                for lane in range(32):
                    g,t=lane>>2,lane&3; cs=[]
                    for u in range(4):
                        jv=jb+NT*(2*t+(u&1))+2*mt+(u>>1); jv=jv if jv<kL else 0
                        c=Codes(VB,D,VC); c.load(vvec[jv],g); cs.append(c)
                    ab[lane]=vwords(cs[0],cs[1],g); cd[lane]=vwords(cs[2],cs[3],g)
                for i in range(DM):
                    a=[]
                    for l in range(32):
                        ent=[ab[l][(i,0)],ab[l][(i,1)],cd[l][(i,0)],cd[l][(i,1)]]
                        a.append(tuple(vt_[byte(w,k)] for (w,k) in ent))
                    res=mma(a,[pb[l][mt] for l in range(32)],[o[l][i] for l in range(32)])
                    for l in range(32): o[l][i]=res[l]
        states.append((o,m,lsum,ev))
    # merge of the warps as the kernel's epilogue: column sums over the 8
    # lanes of a t, s_m / s_l per warp and row, o scaled to the block's max
    # into s_o (row w*8 + 2t + r, lane g's chunk at g*(VC+1), LDO padding),
    # then thread tid sums kDpt consecutive dims of row tid // (D // kDpt)
    LDO=8*(VC+1); kDpt=8*D//128
    s_o=np.zeros(W*8*LDO); s_m=np.full((W,8),-np.inf); s_l=np.zeros((W,8))
    ref0=lambda x: 0.0 if x==-np.inf else x
    for w,(o,m,lsum,ev) in enumerate(states):
        for l in range(32):
            g,t=l>>2,l&3
            for r in range(2): s_m[w][2*t+r]=m[l][r]
    for w,(o,m,lsum,ev) in enumerate(states):
        for l in range(32):
            g,t=l>>2,l&3
            for r in range(2):
                mb=max(s_m[x][2*t+r] for x in range(W))
                f=2.0**(m[l][r]-ref0(mb)) if m[l][r]!=-np.inf else 0.0
                if g==0: s_l[w][2*t+r]=sum(lsum[l2][r] for l2 in range(t,32,4))*f
                base=(w*8+2*t+r)*LDO+g*(VC+1)
                for i in range(DM):
                    s_o[base+2*i]=o[l][i][r]*f*2.0**ev; s_o[base+2*i+1]=o[l][i][2+r]*f*2.0**ev
    out=np.zeros((nrows,D))
    for tid in range(128):
        r=tid//(D//kDpt); d0=tid%(D//kDpt)*kDpt
        if r>=nrows: continue
        L=sum(s_l[w][r] for w in range(W))
        so=r*LDO+(d0//VC)*(VC+1)+d0%VC
        for i in range(kDpt):
            out[r,d0+i]=sum(s_o[so+w*8*LDO+i] for w in range(W))/L
    kd=np.array(cb(KB))[kcodes]*ks[:,None]; vd=np.array(cb(VB))[vcodes]*vs[:,None]
    sc=(q.astype(np.float64)*4/np.sqrt(D))@kd.T; p=np.exp(sc-sc.max(1,keepdims=True)); p/=p.sum(1,keepdims=True)
    ref=p@vd
    return np.linalg.norm(out-ref)/np.linalg.norm(ref)
def main():
    bad=check_bits()
    print('index words vs docs/format.md: %d mismatches' % bad)
    ok=bad==0
    for D,KB,VB,nr,kL in ((64,4,4,4,170),(128,3,4,8,145),(128,4,3,3,33),(256,3,3,5,90),(64,3,3,8,300)):
        err=run(D,KB,VB,nr,kL,D+KB*7+VB)
        ok=ok and err<3e-3
        print("D=%d turbo%d/turbo%d rows=%d kL=%d: rel err %.2e (fp16)"%(D,KB,VB,nr,kL,err))
    print("OK" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
